"""The callback study (`make callbacks`, docs/callbacks.md): what EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
and TensorBoard change in training, against a run without them, paired by seed."""
