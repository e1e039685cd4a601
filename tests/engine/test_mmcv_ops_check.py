"""Pre-flight: a GPU run with an mmcv whose compiled ops are CPU-only stops before anything is
built, naming the mmcv ops the config needs and the fix (both probes simulated)."""
from pathlib import Path

import pytest

from mmmobilemamba.engine import launch, mmcv_ops_check
from mmmobilemamba.engine.config import load_config
from mmmobilemamba.engine.mmcv_ops_check import (check_mmcv_cuda_ops, mmcv_has_cuda_ops,
                                                 required_mmcv_ops)

QUICKSTART = Path(__file__).resolve().parents[2] / 'configs' / 'quickstart'
RETINANET = str(QUICKSTART / 'retinanet_mobilemamba_demo-coco.py')
MASK_RCNN = str(QUICKSTART / 'mask-rcnn_mobilemamba_demo-coco.py')
SSDLITE = str(QUICKSTART / 'ssdlite_mobilemamba_demo-coco.py')
SEGMENTORS = [str(QUICKSTART / name) for name in (
    'fpn_mobilemamba_demo-ade.py', 'pspnet_mobilemamba_demo-ade.py',
    'deeplabv3_mobilemamba_demo-ade.py')]


@pytest.fixture
def machine(monkeypatch):
    """Set ``machine.cuda`` (torch sees a GPU) and ``machine.mmcv_cuda`` (mmcv's compiled ops
    have CUDA kernels); records whether mmcv was asked."""
    class Machine:
        cuda = True
        mmcv_cuda = False
        mmcv_asked = False

    def has_cuda_ops():
        Machine.mmcv_asked = True
        return Machine.mmcv_cuda
    monkeypatch.setattr(mmcv_ops_check, 'runs_on_cuda', lambda: Machine.cuda)
    monkeypatch.setattr(mmcv_ops_check, 'mmcv_has_cuda_ops', has_cuda_ops)
    return Machine


@pytest.fixture
def built(monkeypatch):
    """``launch.build_runner`` records the configs it would have built (none expected)."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    configs = []
    monkeypatch.setattr(launch, 'build_runner', configs.append)
    return configs


# ------------------------------------------------------------------- ops of each config
def test_retinanet_needs_sigmoid_focal_loss_and_nms():
    assert required_mmcv_ops(load_config(RETINANET).model) == {
        'sigmoid_focal_loss': 'model.bbox_head.loss_cls', 'nms': 'model.test_cfg.nms'}


def test_mask_rcnn_needs_nms_and_roi_align():
    ops = required_mmcv_ops(load_config(MASK_RCNN).model)
    assert ops == {'nms': 'model.train_cfg.rpn_proposal.nms',
                   'roi_align': 'model.roi_head.bbox_roi_extractor.roi_layer'}


def test_ssdlite_needs_nms_only():
    assert required_mmcv_ops(load_config(SSDLITE).model) == {'nms': 'model.test_cfg.nms'}


@pytest.mark.parametrize('path', SEGMENTORS)
def test_segmentors_need_no_mmcv_op(path):
    assert required_mmcv_ops(load_config(path).model) == {}


def test_op_types_nms_without_type_and_softmax_focal_loss():
    model = dict(
        neck=dict(conv_cfg=dict(type='DCNv2')),
        head=dict(loss_cls=dict(type='FocalLoss', use_sigmoid=False),
                  loss_extra=[dict(type='CrossEntropyLoss'), dict(type='RoIPool')]),
        test_cfg=dict(nms=dict(iou_threshold=0.5), soft=dict(type='soft_nms')))
    assert required_mmcv_ops(model) == {
        'modulated_deform_conv': 'model.neck.conv_cfg', 'roi_pool': 'model.head.loss_extra.1',
        'nms': 'model.test_cfg.nms', 'soft_nms': 'model.test_cfg.soft'}


# ------------------------------------------------------------------------------ probes
def test_cuda_with_cpu_only_mmcv_is_an_error_naming_ops_and_fix(machine):
    problems = check_mmcv_cuda_ops(load_config(RETINANET))
    assert len(problems) == 1 and problems[0].severity == 'error'
    message = str(problems[0])
    assert message.startswith('[ERROR] mmcv: this run uses CUDA, but the installed mmcv 2.1.0 '
                              'has CPU ops only')
    assert ('sigmoid_focal_loss (model.bbox_head.loss_cls), nms (model.test_cfg.nms)'
            in message)
    assert '`make setup` on this GPU machine' in message
    assert 'FORCE_CUDA=1 make setup' in message and "CUDA_VISIBLE_DEVICES=''" in message


def test_cuda_with_cuda_mmcv_is_fine(machine):
    machine.mmcv_cuda = True
    assert check_mmcv_cuda_ops(load_config(MASK_RCNN)) == []


def test_cpu_run_does_not_ask_mmcv(machine):
    machine.cuda = False
    assert check_mmcv_cuda_ops(load_config(MASK_RCNN)) == []
    assert not machine.mmcv_asked


@pytest.mark.parametrize('path', SEGMENTORS)
def test_segmentor_on_cuda_with_cpu_only_mmcv_is_fine(machine, path):
    assert check_mmcv_cuda_ops(load_config(path)) == []


def test_unknown_mmcv_build_is_left_to_the_model_build(machine):
    machine.mmcv_cuda = None  # compiled ops do not load: another error, reported elsewhere
    assert check_mmcv_cuda_ops(load_config(RETINANET)) == []


def test_the_real_probe_reads_mmcvs_compiled_ops():
    from mmcv.ops import get_compiling_cuda_version
    assert mmcv_has_cuda_ops() is (get_compiling_cuda_version() != 'not available')


# ------------------------------------------------------------------------ entry points
def test_train_stops_with_exit_2_before_the_runner_is_built(machine, built, tmp_path, capsys):
    assert launch.train_main([RETINANET, '--work-dir', str(tmp_path / 'wd')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'nothing was run' in err
    assert '[ERROR] mmcv: this run uses CUDA' in err and 'sigmoid_focal_loss' in err
    assert 'FORCE_CUDA=1 make setup' in err
    assert built == []


def test_test_stops_with_exit_2_before_the_runner_is_built(machine, built, tmp_path, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    assert launch.test_main([MASK_RCNN, str(checkpoint), '--work-dir', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'roi_align (model.roi_head.bbox_roi_extractor.roi_layer)' in err
    assert 'nms (model.train_cfg.rpn_proposal.nms)' in err
    assert built == []
