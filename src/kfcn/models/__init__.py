"""FCN models on VGG16."""
