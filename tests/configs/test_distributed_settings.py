"""The paper configs' batch sizes, their ``auto_scale_lr`` and docs/distributed.md.

Every paper config names the total batch its lr is for (``auto_scale_lr.base_batch_size``) and
it equals the authors' GPUs x images per GPU; ``--auto-scale-lr`` makes mmengine's runner
multiply every parameter group's lr by total / base_batch_size; the page's table and commands
say what the configs hold.
"""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.nn as nn

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / 'docs' / 'distributed.md'
# config -> (GPUs, images per GPU) of the authors' training (their logs)
PAPER = {
    'configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py': (4, 4),
    'configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py': (4, 4),
    'configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py': (8, 24),
    'configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-512.py': (8, 24),
    'configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py': (4, 8),
    'configs/mobilemamba/deeplabv3_mobilemamba-b4_4xb8-80k_ade20k-512x512.py': (4, 8),
    'configs/mobilemamba/pspnet_mobilemamba-b4_4xb8-80k_ade20k-512x512.py': (4, 8),
}
_CONFIGS = {}


def config(path: str) -> Config:
    if path not in _CONFIGS:
        _CONFIGS[path] = Config.fromfile(str(REPO / path))
    return _CONFIGS[path]


def test_the_table_covers_every_paper_config():
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / 'configs' / 'mobilemamba').glob('*.py')}
    assert on_disk == set(PAPER)


@pytest.mark.parametrize('path', PAPER)
def test_auto_scale_lr_base_is_gpus_times_images_per_gpu(path):
    gpus, per_gpu = PAPER[path]
    cfg = config(path)
    assert cfg.train_dataloader.batch_size == per_gpu
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=gpus * per_gpu)
    # mmdet's / mmseg's naming: NxbM = N GPUs x M images per GPU
    named = re.search(r'_(\d+)xb(\d+)-', path)
    if named:
        assert (int(named[1]), int(named[2])) == (gpus, per_gpu)


class _Model(nn.Module):
    """Parameters named like the paper models' param-wise groups (SS2D ``norm``, ``head``)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 1)
        self.ss2d_norm = nn.LayerNorm(4)
        self.decode_head = nn.Conv2d(4, 2, 1)


def _scaled_lrs(cfg: Config, world_size: int):
    """Each parameter group's lr before and after mmengine's ``Runner.scale_lr``, for
    ``world_size`` processes of the config's per-GPU batch and auto_scale_lr enabled as
    tools/train.py --auto-scale-lr does."""
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from mmmobilemamba.engine.launch import build_train_parser, prepare_train_config
    wrapper = build_optim_wrapper(_Model(), cfg.optim_wrapper)
    before = [group['lr'] for group in wrapper.optimizer.param_groups]
    # the runner's own method, on what it reads of a runner: its world size, the train
    # dataloader config, logger and (unbuilt) schedulers
    runner = SimpleNamespace(world_size=world_size, _train_dataloader=cfg.train_dataloader,
                             train_dataloader=cfg.train_dataloader,
                             logger=MMLogger.get_current_instance(), param_schedulers=None)
    args = build_train_parser().parse_args([cfg.filename, '--auto-scale-lr'])
    args_cfg = prepare_train_config(args)
    assert args_cfg.auto_scale_lr.enable is True
    Runner.scale_lr(runner, wrapper, args_cfg.auto_scale_lr)
    return before, [group['lr'] for group in wrapper.optimizer.param_groups]


@pytest.mark.parametrize('path,world_size', [
    ('configs/mobilemamba/mask-rcnn_mobilemamba-b1_fpn_1x_coco.py', 8),
    ('configs/mobilemamba/ssdlite_mobilemamba-b1_8xb24-120e_coco-320.py', 4),
    ('configs/mobilemamba/fpn_mobilemamba-b4_4xb8-160k_ade20k-512x512.py', 2),
    ('configs/mobilemamba/deeplabv3_mobilemamba-b4_4xb8-80k_ade20k-512x512.py', 4),
])
def test_auto_scale_lr_multiplies_the_lr_by_total_over_base(path, world_size):
    cfg = config(path)
    gpus, per_gpu = PAPER[path]
    before, after = _scaled_lrs(cfg, world_size)
    ratio = world_size * per_gpu / (gpus * per_gpu)
    assert after == pytest.approx([lr * ratio for lr in before])
    assert before[0] == cfg.optim_wrapper.optimizer.lr
    if 'fpn_mobilemamba-b4' in path:  # the decode head's 10x scales with the rest
        assert max(after) == pytest.approx(10 * cfg.optim_wrapper.optimizer.lr * ratio)


def test_the_paper_gpu_count_leaves_the_lr_as_it_is():
    path = 'configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py'
    before, after = _scaled_lrs(config(path), PAPER[path][0])
    assert after == before


# ------------------------------------------------------------------ docs/distributed.md
def _doc_commands():
    """The page's shell lines, continuation lines joined, each with the comment above it."""
    text = DOC.read_text(encoding='utf-8').replace('\\\n', ' ')
    lines = [' '.join(line.split()) for line in text.splitlines()]
    return [(lines[i - 1] if lines[i - 1].startswith('#') else '', line)
            for i, line in enumerate(lines)
            if re.search(r'(dist|slurm)_train\.sh \S', line) and '`' not in line]


def test_the_page_table_matches_the_configs():
    rows = re.findall(r'^\| [^|]+ \| `(configs/\S+)` \| (\d+) x (\d+) \((\d+)\) \| (\d+) \| (\S+) \|$',
                      DOC.read_text(encoding='utf-8'), re.M)
    assert {row[0] for row in rows} == set(PAPER)
    for path, gpus, per_gpu, total, base, lr in rows:
        cfg = config(path)
        assert (int(gpus), int(per_gpu)) == PAPER[path]
        assert int(total) == int(base) == cfg.auto_scale_lr.base_batch_size
        assert float(lr) == cfg.optim_wrapper.optimizer.lr


def test_the_page_commands_train_with_the_total_the_lr_is_for():
    """A launch without --auto-scale-lr keeps the config's total; one with it says the lr it
    gets (``N GPUs x B = T images: lr L x T / base = L'``) and that is the runner's."""
    commands = _doc_commands()
    assert len(commands) >= 12
    for comment, line in commands:
        match = re.search(r'dist_train\.sh (configs/\S+) (\d+)', line)
        if match:
            path, procs = match[1], int(match[2]) * int(re.search(r'NNODES=(\d+)', line)[1]
                                                        if 'NNODES=' in line else 1)
        else:
            match = re.search(r'slurm_train\.sh \S+ \S+ (configs/\S+) \S+', line)
            path, procs = match[1], int(re.search(r'GPUS=(\d+)', line)[1])
        cfg = config(path)
        per_gpu = re.search(r'train_dataloader\.batch_size=(\d+)', line)
        per_gpu = int(per_gpu[1]) if per_gpu else cfg.train_dataloader.batch_size
        base = cfg.auto_scale_lr.base_batch_size
        if '--auto-scale-lr' not in line:
            assert procs * per_gpu == base, line
            continue
        said = re.search(r'on (\d+) GPUs x (\d+) = (\d+) images: lr (\S+) x (\d+) / (\d+) = (\S+)',
                         comment)
        if said:
            assert [int(said[i]) for i in (1, 2, 3, 5, 6)] == [procs, per_gpu, procs * per_gpu,
                                                              procs * per_gpu, base], comment
            assert float(said[4]) == cfg.optim_wrapper.optimizer.lr
            assert float(said[7]) == pytest.approx(float(said[4]) * procs * per_gpu / base)
