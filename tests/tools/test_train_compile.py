"""mmengine's ``compile`` option end to end: ``tools/train.py CONFIG --cfg-options compile=True``
trains the quickstart RetinaNet (torch.compile's default backend, inductor, on the CPU), its
backbone and neck compiled once for the batches' changing sizes."""
import pytest
from tool_configs import REPO, run_tool

pytest.importorskip('mmdet')


@pytest.mark.slow
def test_train_py_with_compile_true_trains_the_quickstart_retinanet(tmp_path):
    from mmmobilemamba.datasets.synthetic import generate_coco_shapes
    data = generate_coco_shapes(tmp_path / 'coco', num_train=4, num_val=1,
                                image_size=64)['root']
    proc = run_tool('train.py', [
        REPO / 'configs/quickstart/retinanet_mobilemamba_demo-coco.py', '--work-dir',
        tmp_path / 'work', '--cfg-options', 'compile=True',
        f'train_dataloader.dataset.data_root={data}/', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_cfg.max_epochs=2', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.logger.interval=1'], timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'compile: backbone, neck compiled in place' in log
    assert 'Model has been "compiled"' not in log  # not mmengine's whole train_step
    assert 'Epoch(train) [2][2/2]' in log and 'loss: nan' not in log
