"""A detector or segmentor whose network runs in an inference runtime, with ``test_step`` as the
model's: mmdet's and mmseg's own preprocessing and post-processing around the exported file."""
import importlib
from typing import List, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import TWO_STAGE_GROUPS, output_groups
from .record import read_record
from .runtime import Session, get_runtime

__all__ = ['RuntimeModel', 'model_class']


class RuntimeModel:
    """The PyTorch model's ``test_step`` with the exported network in place of its own.

    The data preprocessor and the post-processing (and a two-stage detector's RoI heads) are
    the PyTorch model's own code; the exported file computes the rest. Use it where the
    model's ``test_step`` is used, e.g. to evaluate the exported file with mmengine's
    ``Evaluator`` over the config's test dataloader. Subclasses name their runtime
    (:class:`~mmmobilemamba.deploy.OnnxRuntimeModel`,
    :class:`~mmmobilemamba.deploy.ExecuTorchModel`).

    Args:
        model (nn.Module): the PyTorch detector/segmentor of the exported file (its weights
            matter only for two-stage detectors' RoI heads).
        exported_file (str): a file written by the export (kind 'detector' or 'segmentor'),
            with its record ``FILE.json`` beside it.
        threads (int, optional): the runtime's CPU threads (None: its default).
        pad_to_input_shape (bool): pad preprocessed images smaller than the exported shape to
            it (bottom and right, zeros, as an application letterboxes camera images), and
            tell the post-processing; False refuses them. Larger images are always refused.
            Default: False.
    """

    runtime_name: str = ''

    def __init__(self, model: nn.Module, exported_file: str, threads: Optional[int] = None,
                 pad_to_input_shape: bool = False) -> None:
        meta = read_record(exported_file)
        if meta['runtime'] != self.runtime_name:
            raise ValueError(f'{exported_file} was exported for {meta["runtime"]}, not '
                             f'{self.runtime_name}: use the model class of that runtime')
        runtime = get_runtime(self.runtime_name)
        runtime.require()
        self._setup(model, meta, runtime.load(str(exported_file), threads), pad_to_input_shape)

    @classmethod
    def from_session(cls, model: nn.Module, meta: dict, session: Session,
                     pad_to_input_shape: bool = False) -> 'RuntimeModel':
        """A runtime model on a session already loaded (e.g. from bytes not yet written).

        Args:
            model (nn.Module): the PyTorch detector/segmentor.
            meta (dict): the export's record.
            session (Session): the loaded file.
            pad_to_input_shape (bool): see the class.
        """
        instance = cls.__new__(cls)
        instance._setup(model, meta, session, pad_to_input_shape)
        return instance

    def _setup(self, model: nn.Module, meta: dict, session: Session,
               pad_to_input_shape: bool) -> None:
        if meta['kind'] not in ('detector', 'segmentor'):
            raise ValueError(f'{meta.get("file")} holds a {meta["kind"]}: only detectors and '
                             'segmentors predict')
        self.meta, self.session = meta, session
        self.model = model.eval()
        self.groups = output_groups(meta['output_names'])
        self.pad_to_input_shape = pad_to_input_shape

    @property
    def two_stage(self) -> bool:
        """Outputs of a detector with an RPN: features, RPN scores and deltas."""
        return tuple(g for g, _ in self.groups) == TWO_STAGE_GROUPS

    def run(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        """The exported network's outputs for a preprocessed batch, image by image.

        Args:
            inputs (Tensor): ``(N, 3, H, W)`` at the exported shape.
        """
        expected = tuple(self.meta['input_shape'][2:])
        if tuple(inputs.shape[2:]) != expected:
            raise ValueError(f'the exported network takes {expected[0]}x{expected[1]} inputs '
                             f'(static shape), got {tuple(inputs.shape[2:])}: pad or resize the '
                             'images to it (pad_to_input_shape=True pads smaller ones), or '
                             'export at this size')
        per_image = [self.session.run(x[None].float().cpu()) for x in inputs]
        return [torch.cat([out[i] for out in per_image]) for i in range(len(per_image[0]))]

    def _pad(self, inputs: torch.Tensor, samples: list) -> torch.Tensor:
        """Pad a preprocessed batch to the exported shape; the samples learn of the padding
        (mmseg crops its logits by ``padding_size``; mmdet's boxes are unaffected)."""
        height, width = self.meta['input_shape'][2:]
        extra_h, extra_w = height - inputs.shape[2], width - inputs.shape[3]
        if extra_h < 0 or extra_w < 0 or (extra_h == 0 and extra_w == 0):
            return inputs  # larger: run() refuses it, naming the exported shape
        for sample in samples:
            if self.meta['kind'] == 'segmentor':  # mmseg: (left, right, top, bottom)
                key = 'img_padding_size' if 'img_padding_size' in sample.metainfo \
                    else 'padding_size'
                left, right, top, bottom = sample.metainfo.get(key, [0] * 4)
                sample.set_metainfo({key: [left, right + extra_w, top, bottom + extra_h]})
            sample.set_metainfo(dict(batch_input_shape=(height, width)))
        return F.pad(inputs, (0, extra_w, 0, extra_h))

    @torch.no_grad()
    def test_step(self, data: dict) -> list:
        """Preprocess ``data``, run the exported network, post-process: data samples.

        Args:
            data (dict): a dataloader batch.
        """
        data = self.model.data_preprocessor(data, False)
        inputs, samples = data['inputs'], data['data_samples']
        if self.pad_to_input_shape:
            inputs = self._pad(inputs, samples)
        outputs = self.run(inputs)
        if self.meta['kind'] == 'segmentor':
            return self.model.postprocess_result(outputs[0], samples)
        metas = [s.metainfo for s in samples]
        grouped, start = [], 0
        for _, count in self.groups:
            grouped.append(outputs[start:start + count])
            start += count
        if self.two_stage:
            feats, rpn_cls, rpn_reg = grouped
            proposals = self.model.rpn_head.predict_by_feat(
                rpn_cls, rpn_reg, batch_img_metas=metas, cfg=self.model.test_cfg.rpn,
                rescale=False)
            results = self.model.roi_head.predict(tuple(feats), proposals, samples, rescale=True)
        else:
            results = self.model.bbox_head.predict_by_feat(*grouped, batch_img_metas=metas,
                                                           rescale=True)
        return self.model.add_pred_to_datasample(samples, results)



# runtime name -> (module, class) of its RuntimeModel, imported on use
RUNTIME_MODELS = {'onnxruntime': ('.onnx', 'OnnxRuntimeModel'),
                  'executorch': ('.executorch', 'ExecuTorchModel')}


def model_class(runtime: str) -> Type[RuntimeModel]:
    """The :class:`RuntimeModel` subclass of ``runtime`` ('onnxruntime' or 'executorch').

    Args:
        runtime (str): a runtime name.
    """
    if runtime not in RUNTIME_MODELS:
        raise ValueError(f'unknown runtime {runtime!r}: choose from {sorted(RUNTIME_MODELS)}')
    module_name, class_name = RUNTIME_MODELS[runtime]
    return getattr(importlib.import_module(module_name, __package__), class_name)
