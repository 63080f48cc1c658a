"""Server strategies: one module per algorithm, registered in ``fedsim.algorithms``."""
