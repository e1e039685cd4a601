"""Convert an authors' MobileMamba checkpoint to this package's backbone layout.

    python tools/model_converters/mobilemamba_official.py SRC.pth DST.pth

SRC may be a released classification file ({'net', 'net_E'} or bare; EMA weights preferred),
a downstream mmdet/mmseg checkpoint ({'state_dict'} with ``backbone.`` keys) or our own format.
DST is written atomically as {'state_dict': backbone weights, 'meta': {...}} and loads with
``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
import argparse
import os
import sys
import tempfile

import torch

from mmmobilemamba.models.checkpoint import (convert_official_checkpoint, load_checkpoint_file,
                                             unwrap_state_dict)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='released / downstream checkpoint')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--prefix', default=None,
                        help="backbone key prefix inside SRC (found by itself for 'backbone.')")
    parser.add_argument('--trust-source', action='store_true',
                        help='load SRC with weights_only=False: only for a file you trust, when '
                        'it pickles objects other than tensors')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.trust_source:
        print('warning: --trust-source unpickles arbitrary objects from', args.src, file=sys.stderr)
        obj = torch.load(args.src, map_location='cpu', weights_only=False)
    else:
        obj = load_checkpoint_file(args.src)
    _, source = unwrap_state_dict(obj, args.prefix)
    state = convert_official_checkpoint(obj, args.prefix)
    out = dict(state_dict=state, meta=dict(source=source, converted_from=os.path.basename(args.src)))
    dst_dir = os.path.dirname(os.path.abspath(args.dst))
    os.makedirs(dst_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst_dir, suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(out, f)
        os.replace(tmp, args.dst)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f'{len(state)} tensors ({source}) -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
