"""flaxcnn: the modern convolutional networks of Dive into Deep Learning, in JAX/Flax."""
