"""Model assembly: the item tower (paper 3.1-3.3), the whole CTR model (3.4) and its loss (eq. 10)."""
