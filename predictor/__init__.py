"""What serving needs of a model, and nothing more: the network, its calibration, the vocabularies and
the catalogue, loaded from the registry and scoring encoded customers. Training imports this package to
build and register the predictor; serving imports it (and `features`) and never `training`.
"""
