"""The generated COCO shapes load in mmdet and score AP = 1 against themselves."""
from pathlib import Path

import numpy as np
import pytest

from mmmobilemamba.datasets.synthetic import DEMO_CLASSES, DEMO_PALETTE

torch = pytest.importorskip('torch')
pytest.importorskip('mmdet')
from mmcv.transforms import LoadImageFromFile  # noqa: E402
from mmdet.datasets import CocoDataset  # noqa: E402
from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs  # noqa: E402
from mmdet.evaluation import CocoMetric  # noqa: E402


def make_dataset(summary: dict, split: str, pipeline=()) -> CocoDataset:
    info = summary['splits'][split]
    return CocoDataset(data_root=summary['root'], ann_file=info['ann_file'],
                       data_prefix=dict(img=info['img_dir']),
                       metainfo=dict(classes=DEMO_CLASSES, palette=DEMO_PALETTE),
                       pipeline=list(pipeline), test_mode=True)


def test_coco_dataset_reads_generated_json(tiny_coco):
    pipeline = [LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True),
                PackDetInputs()]
    dataset = make_dataset(tiny_coco, 'train', pipeline)
    assert len(dataset) == tiny_coco['splits']['train']['num_images']
    assert dataset.metainfo['classes'] == DEMO_CLASSES
    raw = dataset.get_data_info(0)
    assert raw['instances'] and all(not inst['ignore_flag'] for inst in raw['instances'])
    sample = dataset[0]['data_samples']
    gt = sample.gt_instances
    assert dataset[0]['inputs'].shape == (3, raw['height'], raw['width'])
    assert len(gt) == len(raw['instances'])
    assert gt.labels.max() < len(DEMO_CLASSES)
    masks = gt.masks.to_ndarray().astype(bool)
    boxes = gt.bboxes.tensor.numpy()
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        rows, cols = np.nonzero(mask)
        # Polygons rasterise back inside their box and fill it to the edges.
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)


def ground_truth_predictions(dataset: CocoDataset) -> list:
    """One data sample per image whose predictions are exactly its annotations."""
    from pycocotools.coco import COCO

    coco = COCO(str(Path(dataset.ann_file)))
    samples = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info['img_id']]))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        samples.append(dict(
            img_id=info['img_id'], ori_shape=(info['height'], info['width']),
            pred_instances=dict(
                bboxes=torch.tensor(boxes, dtype=torch.float32),
                scores=torch.ones(len(anns)),
                labels=torch.tensor([a['category_id'] - 1 for a in anns]),
                masks=torch.from_numpy(masks))))
    return samples


def test_coco_metric_gives_perfect_ap_for_ground_truth(tiny_coco):
    dataset = make_dataset(tiny_coco, 'val')
    metric = CocoMetric(ann_file=str(dataset.ann_file), metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    metric.process({}, ground_truth_predictions(dataset))
    results = metric.evaluate(size=len(dataset))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)
    for size in ('s', 'm', 'l'):
        for kind in ('bbox', 'segm'):
            assert results[f'coco/{kind}_mAP_{size}'] in (pytest.approx(1.0), -1.0)
