"""Server strategies: one module per algorithm, registered in ``strategies.registry``."""
