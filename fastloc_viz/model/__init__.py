"""The model: the bundle (preprocessing, class names, logits), classes, probe layers, ViT tokens, and the only code that touches a model's state."""
