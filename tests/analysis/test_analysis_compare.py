"""Whole-model comparisons: the paper's models against the libraries' models in the same head."""
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
from mmmobilemamba.analysis.compare import (PAPER_COMPARISONS, Comparison,  # noqa: E402
                                            Contender, ModelFigures, format_comparisons,
                                            run_comparison, training_memory)
from mmmobilemamba.analysis.dummy_batch import make_dummy_batch  # noqa: E402
from mmmobilemamba.engine.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUICK_RETINANET = Comparison(
    'RetinaNet', Contender('MobileMamba-tiny', 'configs/quickstart/retinanet_mobilemamba_demo-coco.py'),
    (Contender('ResNet-18', 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'),),
    shape=(64, 96), num_classes=5)
QUICK_FPN = Comparison(
    'Segmentor', Contender('MobileMamba-tiny', 'configs/quickstart/fpn_mobilemamba_demo-ade.py'),
    (Contender('ResNet-18-D8', 'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
               (('model.data_preprocessor.size', (64, 64)),)),),
    shape=(64, 64), num_classes=4)


def _heads(cfg):
    """The classes of the heads (ours may subclass the library's, e.g. SSDLiteHead)."""
    import mmmobilemamba.models  # noqa: F401  (registers our heads)
    from mmmobilemamba.engine.config import detect_codebase, get_registry
    registry = get_registry(detect_codebase(cfg), 'MODELS')
    model = cfg.model
    keys = ('decode_head',) if 'decode_head' in model else ('bbox_head', 'roi_head', 'rpn_head')
    return [registry.get(model[k].type) if k in model else None for k in keys]


@pytest.mark.parametrize('comparison', PAPER_COMPARISONS, ids=lambda c: c.task)
def test_paper_models_meet_peers_with_the_same_head(comparison):
    """Each paper config is MobileMamba in the head its peers (configs the libraries ship)
    have; a Cityscapes peer is made an ADE20K model (150 classes)."""
    ours = load_config(str(REPO / comparison.ours.config), dict(comparison.ours.cfg_options))
    assert ours.model.backbone.type == 'MobileMamba'
    for peer in comparison.peers:
        cfg = load_config(peer.config, dict(peer.cfg_options))
        assert cfg.model.backbone.type in ('RegNet', 'ResNet', 'ResNetV1c', 'MobileNetV2')
        for mine, theirs in zip(_heads(ours), _heads(cfg)):
            assert (mine is theirs is None) or issubclass(mine, theirs), peer.label
        if 'decode_head' in cfg.model:
            assert cfg.model.decode_head.num_classes == ours.model.decode_head.num_classes


def test_training_batch_has_ground_truth_for_both_codebases():
    det = make_dummy_batch('mmdet', (40, 60), batch_size=2, with_annotations=True,
                           num_objects=3, num_classes=7)
    gt = det['data_samples'][1].gt_instances
    assert len(gt) == 3 and gt.labels.max() < 7 and gt.masks.masks.shape == (3, 40, 60)
    x1, y1, x2, y2 = gt.bboxes.unbind(1)
    assert ((x2 > x1) & (y2 > y1) & (x2 <= 60) & (y2 <= 40)).all()
    seg = make_dummy_batch('mmseg', (40, 60), with_annotations=True, num_classes=4)
    labels = seg['data_samples'][0].gt_sem_seg.data
    assert labels.shape == (1, 40, 60) and set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}


@pytest.mark.parametrize('comparison', [QUICK_RETINANET, QUICK_FPN], ids=lambda c: c.task)
def test_run_comparison_times_every_model(comparison):
    figures = run_comparison(comparison, REPO, num_iters=2, warmup=1, train_iters=1,
                             memory=False)
    assert [f.label for f in figures] == [comparison.ours.label, comparison.peers[0].label]
    for fig in figures:
        assert fig.params_m > 0 and fig.latency_ms > 0 and fig.train_ms > 0
        assert fig.peak_mib is None
    table = format_comparisons([figures])
    assert table.count('\n') == 3 and '| 1.00x |' in table


@pytest.mark.slow
def test_training_memory_is_measured_in_a_fresh_process():
    """A larger batch needs more memory: the measurement sees the training steps."""
    small = training_memory(QUICK_FPN, QUICK_FPN.peers[0], REPO, 'cpu', (64, 64), 2, steps=1)
    large = training_memory(QUICK_FPN, QUICK_FPN.peers[0], REPO, 'cpu', (256, 256), 4, steps=1)
    assert 0 < small < large


def test_a_failing_measurement_reports_the_childs_error():
    """PSPNet's pyramid pooling cannot train BatchNorm on one image: the error comes back."""
    with pytest.raises(RuntimeError, match='ResNet-18-D8: measuring training memory failed: '
                       'ValueError: Expected more than 1 value per channel'):
        training_memory(QUICK_FPN, QUICK_FPN.peers[0], REPO, 'cpu', (64, 64), 1, steps=1)


def test_ratios_are_to_the_first_peer():
    figures = [ModelFigures('T', 'ours', 10.0, 30.0, 90.0, 300.0),
               ModelFigures('T', 'peer', 20.0, 20.0, 60.0, 200.0),
               ModelFigures('T', 'other', 5.0, 40.0, None, None)]
    rows = format_comparisons([figures]).splitlines()[2:]
    assert rows[0] == '| T | ours | 10.0 | 30.0 | 1.50x | 90.0 | 1.50x | 300 | 1.50x |'
    assert rows[1].count('1.00x') == 3
    assert rows[2].endswith('| 40.0 | 2.00x | - | - | - | - |')


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match='num_iters'):
        run_comparison(QUICK_RETINANET, REPO, num_iters=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.cuda
def test_cuda_memory_is_the_allocator_peak():
    peak = training_memory(QUICK_FPN, QUICK_FPN.ours, REPO, 'cuda', (64, 64), 2, steps=1)
    assert peak > 0
