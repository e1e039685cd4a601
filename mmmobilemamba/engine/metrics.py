"""``DumpSegResults``: pickle segmentation predictions compactly (for ``tools/test.py --out``)."""
from typing import Any, Sequence

import numpy as np
import torch
from mmengine.evaluator import DumpResults
from mmengine.registry import METRICS

# Per-sample keys worth keeping: where the prediction belongs, and the prediction itself.
_KEPT_KEYS = ('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pred_sem_seg')


def _compact_label_map(pred: Any) -> np.ndarray:
    data = pred['data'] if isinstance(pred, dict) else pred
    if torch.is_tensor(data):
        data = data.detach().cpu().numpy()
    data = np.asarray(data).squeeze(0) if np.ndim(data) == 3 else np.asarray(data)
    # Class indices fit in 8 bits for most data sets: 8x smaller than int64.
    return data.astype(np.uint8 if data.size == 0 or data.max() < 256 else np.int32)


@METRICS.register_module()
class DumpSegResults(DumpResults):
    """Dump mmseg predictions to a pickle: one dict per image.

    Each dict holds ``img_path``, ``seg_map_path``, ``ori_shape``, ``img_shape`` and
    ``pred_sem_seg`` (an ``(H, W)`` uint8 array of class indices, int32 beyond 255 classes).
    Logits and ground truth are left out: a full-resolution ``seg_logits`` per image would make
    the file hundreds of megabytes per image.

    Args:
        out_file_path: Output ``.pkl`` file.
        **kwargs: ``collect_device``/``collect_dir`` of :class:`mmengine.evaluator.DumpResults`.
    """

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep the compact prediction of each sample."""
        for sample in data_samples:
            kept = {key: sample[key] for key in _KEPT_KEYS if key in sample}
            if 'pred_sem_seg' in kept:
                kept['pred_sem_seg'] = _compact_label_map(kept['pred_sem_seg'])
            self.results.append(kept)
