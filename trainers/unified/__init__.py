"""One reconstruction model for many products, learned product by product (IUF); work in progress (issue 7)."""
