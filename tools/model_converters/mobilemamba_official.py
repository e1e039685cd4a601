"""Convert an authors' MobileMamba checkpoint to this package's layout.

    python tools/model_converters/mobilemamba_official.py SRC.pth DST.pth [--backbone-only]

SRC may be a released classification file ({'net', 'net_E'} or bare; EMA weights preferred),
one of the authors' released detectors/segmentors (mmengine's {'state_dict', 'meta'}: the
backbone and their EfficientViTFPN neck are renamed, the heads kept) or our own format.
DST is written atomically as {'state_dict': ..., 'meta': {...}}: a whole model for
``load_from`` / ``tools/test.py`` (the source's meta, e.g. its class names, is kept), or a
backbone (classification files, or ``--backbone-only``) for
``init_cfg=dict(type='Pretrained', checkpoint=DST)``. Neither step needs converting first:
both accept the authors' files as they are.
"""
import argparse
import io
import os
import sys

import torch

from mmmobilemamba.engine.atomic_io import atomic_write_bytes
from mmmobilemamba.models.checkpoint import (convert_official_checkpoint, convert_official_model,
                                             load_checkpoint_file, state_dict_of,
                                             unwrap_state_dict)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='released classification / downstream checkpoint')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--backbone-only', action='store_true',
                        help='from a detector/segmentor, keep only its backbone (for init_cfg)')
    parser.add_argument('--prefix', default=None,
                        help="backbone key prefix inside SRC (found by itself for 'backbone.'); "
                        'implies --backbone-only')
    parser.add_argument('--trust-source', action='store_true',
                        help='load SRC with weights_only=False: only for a file you trust, when '
                        'it pickles objects other than tensors')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.trust_source:
        print('warning: --trust-source unpickles arbitrary objects from', args.src, file=sys.stderr)
        obj = torch.load(args.src, map_location='cpu', weights_only=False)
    else:
        obj = load_checkpoint_file(args.src)
    whole_model = (not args.backbone_only and args.prefix is None and
                   any(k.startswith('backbone.') for k in state_dict_of(obj)))
    meta = dict(obj.get('meta') or {}) if whole_model and isinstance(obj, dict) else {}
    if whole_model:
        state, source = convert_official_model(obj), 'whole model'
    else:
        _, source = unwrap_state_dict(obj, args.prefix)
        state = convert_official_checkpoint(obj, args.prefix)
    meta.update(source=source, converted_from=os.path.basename(args.src))
    buffer = io.BytesIO()
    torch.save(dict(state_dict=state, meta=meta), buffer)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    atomic_write_bytes(args.dst, buffer.getvalue())
    print(f'{len(state)} tensors ({source}) -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
