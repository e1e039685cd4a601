# The small MobileMamba of the quickstart configs: B1's blocks, one per stage, narrower (64,
# 128, 192 channels), fast enough to train from scratch on a CPU. A config uses it as
#   backbone=dict(type='MobileMamba', arch={{_base_.tiny_arch}}, ...)
tiny_arch = dict(embed_dims=(64, 128, 192), depths=(1, 1, 1), global_ratios=(0.8, 0.7, 0.6),
                 local_ratios=(0.2, 0.2, 0.3), kernel_sizes=(7, 5, 3))
