"""The generated ADE-layout shapes load in mmseg with reduce_zero_label=True."""
import numpy as np
import pytest

from mmmobilemamba.datasets.synthetic import SEG_CLASSES, SEG_PALETTE

torch = pytest.importorskip('torch')
pytest.importorskip('mmseg')
from mmcv.transforms import LoadImageFromFile  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402


def make_dataset(summary: dict, split: str) -> BaseSegDataset:
    info = summary['splits'][split]
    return BaseSegDataset(
        data_root=summary['root'],
        data_prefix=dict(img_path=info['img_dir'], seg_map_path=info['ann_dir']),
        img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
        metainfo=dict(classes=SEG_CLASSES, palette=SEG_PALETTE),
        pipeline=[LoadImageFromFile(), LoadAnnotations(), PackSegInputs()])


def test_seg_dataset_reads_layout_with_reduced_labels(tiny_ade):
    dataset = make_dataset(tiny_ade, 'train')
    assert len(dataset) == tiny_ade['splits']['train']['num_images']
    assert dataset.metainfo['classes'] == SEG_CLASSES
    seen = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        labels = sample['data_samples'].gt_sem_seg.data
        assert labels.shape[-2:] == sample['inputs'].shape[-2:]
        seen |= set(torch.unique(labels).tolist())
    # Disk value 0 -> 255 (ignore), value i -> i - 1.
    assert seen <= set(range(len(SEG_CLASSES))) | {255}
    assert 255 in seen and 0 in seen  # the boundary band and the sky


def test_iou_metric_is_perfect_for_ground_truth(tiny_ade):
    dataset = make_dataset(tiny_ade, 'val')
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        gt = dataset[index]['data_samples'].gt_sem_seg.data
        metric.process({}, [dict(pred_sem_seg=dict(data=gt.clone()),
                                 gt_sem_seg=dict(data=gt))])
    results = metric.evaluate(size=len(dataset))
    assert results['mIoU'] == pytest.approx(100.0)
    assert np.isfinite(results['aAcc'])
