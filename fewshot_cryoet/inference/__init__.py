"""Classifying and segmenting users' own subtomograms with a trained model or a training-free
method (``fsc predict``)."""
