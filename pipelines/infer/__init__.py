"""Inference on new videos and texts with trained models: checkpoint loading, featurization into trees,
the video index, text search, question answering and attention maps.

It reads training's task classes through one loader (:func:`~pipelines.infer.checkpoints.load_model`);
training never imports this package.
"""
