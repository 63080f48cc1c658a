"""Client side: the Flower ClientApp and the plain-PyTorch local routines."""
