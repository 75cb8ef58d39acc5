"""Dataset conversion (YTVIS/OVIS/COCO -> TFRecords), tf.data input and the synthetic moving-shapes set.

TensorFlow is imported lazily, only by the modules that read or write TFRecords.
"""
