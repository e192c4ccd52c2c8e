"""Checkpoints from elsewhere, as a library the operators build on: locate Hugging Face directories,
safetensors files and PyTorch state dicts and read them lazily (``layout``, ``source``), check that
several line up (``validate``), write sharded safetensors and HF directories (``writer``, ``hfdir``,
``export``), merge them tensor by tensor with a bound merge method (``engine``), and turn mergekit
configs into specs (``mergekit``).

A checkpoint travels between steps as a :class:`~mlspec.values.CheckpointRef`: its path and
fingerprint, never its weights. The operators that make and use them (``load``,
``merge_checkpoints``, ``perplexity``) live in :mod:`mlspec.ops.checkpoints`; nothing here imports
an operator. This package's ``__init__`` stays torch-free (``mlspec check`` reads ``settings``).
"""
