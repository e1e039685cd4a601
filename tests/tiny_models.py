"""The small MobileMamba the tests build: one definition for the whole suite.

B1's blocks, one per stage, 48/64/96 channels: fast on a CPU, and every part of the mixer is
present (stage 0 splits into 32 global, 9 local and 7 identity channels).
"""
TINY_ARCH = dict(embed_dims=(48, 64, 96), depths=(1, 1, 1), global_ratios=(0.8, 0.7, 0.6),
                 local_ratios=(0.2, 0.2, 0.3), kernel_sizes=(7, 5, 3))
TINY_CHANNELS = list(TINY_ARCH['embed_dims'])
