"""The method: the backbone and its towers, LoRA, the ACE-HGNN, the loss, the method registry, and the
formats a trained model is read from and written to (checkpoints, exports). `config` is torch-free."""
