"""What single neurons do: ablation (the class without them) and the atlas (what each channel responds to over a collection)."""
