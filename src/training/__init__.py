"""Training one trial: the config and its validation, the data source, the models, the callbacks,
resuming, and the fit core. Keras and Hydra only: nothing here logs to MLflow.
"""
