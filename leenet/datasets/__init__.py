"""Readers and dataset classes behind :mod:`leenet.data` (import the public API from there).

* :mod:`~leenet.datasets.memory`: uint8 in-memory datasets with batch-wise, vectorized
  normalization, augmentation and resizing (digits, Fashion-MNIST, CIFAR).
* :mod:`~leenet.datasets.folder`: lazily loaded ImageFolder trees (ImageNette, any folder).
* :mod:`~leenet.datasets.hf`, :mod:`~leenet.datasets.hf_splits`: Hugging Face datasets
  (``hf:NAME[:CONFIG]``, ``hf-local:DIR[:CONFIG]``; the optional ``datasets`` package).
* :mod:`~leenet.datasets.idx`, :mod:`~leenet.datasets.cifar`,
  :mod:`~leenet.datasets.digits`: the on-disk formats and their downloads.
"""
