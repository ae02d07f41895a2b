"""The shapes world: a tiny, verifiable text-to-image world (scenes, prompt grammar, pretraining helpers).

Images are float tensors in [0, 1], B×3×H×W; pixel (row y, column x) with y growing downwards, so "above"
means a smaller centroid y.
"""
