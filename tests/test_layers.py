"""The package's layers: imports flow one way, from the entry points down to the shared modules."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ace_lora"
# Lowest first; a module imports only from its own layer or lower ones (function-level imports included).
LAYERS = (
    ("ace_lora.errors", "ace_lora.io", "ace_lora.runtime", "ace_lora.folder_lock"),  # shared
    ("ace_lora.data",),
    ("ace_lora.model",),
    ("ace_lora.evaluation",),
    ("ace_lora.params",),  # the command lines' flags (torch-free)
    ("ace_lora.evaluation.command_line",),
    ("ace_lora.train",),
    ("ace_lora.runners",),
    ("ace_lora.sweep", "ace_lora.submit"),
    ("ace_lora",),  # the package itself: ace_lora.load
)


def layer_of(module: str) -> int:
    """The layer of the longest prefix that names `module` or a package above it."""
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ace_lora"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("ace_lora"))


def test_imports_flow_one_way():
    upward = [f"{module_name(path)} imports {imported}"
              for path in sorted(PACKAGE.rglob("*.py"))
              for imported in imported_modules(path)
              if layer_of(imported) > layer_of(module_name(path))]
    assert upward == []


def test_module_names_are_unique():
    names = [path.stem for path in PACKAGE.rglob("*.py") if path.stem != "__init__"]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
