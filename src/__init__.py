"""Compare Keras optimizers and training callbacks on MNIST, tracked with MLflow, orchestrated by Hydra and DVC."""
