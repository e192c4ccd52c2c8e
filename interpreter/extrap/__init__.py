"""The ``.extrap`` dialect: generated reasoning tasks (mazes, prefix sums), recurrent and implicit
networks that think for longer at test time, and the analysis of their iterations.

Modules (one concept each): :mod:`.mazes` and :mod:`.prefix_sums` generate tasks, :mod:`.models`
defines the networks, :mod:`.training`, :mod:`.evaluation` and :mod:`.dynamics` are pure functions
on tensors, :mod:`.ops` adapts them to the operator registry declared in the torch-free :mod:`.specs`.
"""
