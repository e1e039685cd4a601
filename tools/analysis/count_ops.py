"""Count the kernel launches of MobileMamba and reference backbones: per eval forward and,
with --train, per training step.

    python tools/analysis/count_ops.py [--arch b1 t2] [--form eager deployed deployed-cpu
        deployed-cuda] [--batch 1 8] [--size 512] [--train] [--amp {bf16,fp16}]
        [--device cpu] [--kernels {triton,torch}] [--dry-triton]
        [--references regnetx_800mf resnet18 resnet50 mobilenetv2] [--top 15]
        [--markdown FILE]

Counted by :mod:`mmmobilemamba.analysis.op_count` on any device: ATen operators that launch a
kernel, inside custom ops too, and every Triton kernel launch; views and allocations launch
nothing. MobileMamba's CUDA code path (eager NCHW and the CUDA deploy form) runs its custom ops
on the implementation --kernels names: 'triton' (default where Triton imports; on a CPU the
kernels run in Triton's interpreter, as on a GPU launch for launch) or 'torch' (the PyTorch
twins). With --dry-triton the Triton launches are counted without running the kernels (the
same counts, seconds instead of minutes in the interpreter). The CPU forms ('deployed' on a
CPU, 'deployed-cpu') count their own path (channels-last, the twins). Forms: 'eager' (as
built, eval mode), 'deployed' (``switch_to_deploy()``), 'deployed-cpu' / 'deployed-cuda'
(``switch_to_deploy(device=...)``, the form built for that device, counted on --device).
Deployed forms are inference only: the training step always runs the eager model in train
mode, with frozen BatchNorm statistics (``norm_eval``) for every backbone, as mmdet's backbones
and the detection configs have them. References are mmdet backbones
(:mod:`mmmobilemamba.analysis.backbones`); ratios are to RegNetX-800MF (MobileMamba-B1's FLOPs)
at the same batch and size. The table says which implementation the custom-op calls ran.
"""
import argparse
import contextlib
import sys
from typing import Dict, List, Optional

import torch

from mmmobilemamba.analysis.backbones import REFERENCE_BACKBONES as REFERENCES
from mmmobilemamba.analysis.backbones import build_backbone
from mmmobilemamba.analysis.benchmark import publish_report
from mmmobilemamba.analysis.op_count import (OpCount, count_forward, count_train_step,
                                             triton_interpreter)

FORMS = ('eager', 'deployed', 'deployed-cpu', 'deployed-cuda')
AMP = {'bf16': torch.bfloat16, 'fp16': torch.float16}
REFERENCE = 'RegNetX-800MF'


def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # no Triton, or one that does not work with this torch
        return False
    return True


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=['b1'], help='MobileMamba variants')
    parser.add_argument('--form', nargs='+', default=['eager', 'deployed'], choices=FORMS)
    parser.add_argument('--batch', nargs='+', type=int, default=[1])
    parser.add_argument('--size', nargs='+', type=int, default=[224], help='square input sizes')
    parser.add_argument('--train', action='store_true',
                        help='also count one training step (eager models, train mode)')
    parser.add_argument('--amp', choices=sorted(AMP), default=None,
                        help='autocast dtype of the training step (default: float32)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--kernels', choices=('triton', 'torch'), default=None,
                        help="custom ops' implementation on the CUDA code path: 'triton' (the "
                             'default where Triton imports; interpreted on a CPU) or the '
                             "PyTorch twins ('torch')")
    parser.add_argument('--dry-triton', action='store_true',
                        help='count Triton launches without running the kernels (same counts)')
    parser.add_argument('--layout', choices=('nchw', 'device'), default='nchw',
                        help="memory format of the eager MobileMamba: 'nchw' (default) follows "
                             "CUDA's code path on any device, the stand-in for its kernel count; "
                             "'device' is the device's own choice (channels-last on CPU)")
    parser.add_argument('--references', nargs='*', default=['regnetx_800mf'],
                        choices=sorted(REFERENCES))
    parser.add_argument('--top', type=int, default=0,
                        help='also list the N most frequent ops of each model')
    parser.add_argument('--markdown', default=None, help='also write the report to this file')
    return parser.parse_args()


def form_device(form: str, device: str) -> str:
    """The device type a form is built for: 'cpu' or 'cuda'."""
    return form[len('deployed-'):] if form.startswith('deployed-') else torch.device(device).type


def build_model(name: str, form: str = 'eager', layout: str = 'nchw', kernels: str = 'torch',
                device: str = 'cpu') -> torch.nn.Module:
    """A MobileMamba arch ('b1') in ``form``, or a reference key ('regnetx_800mf'), eval mode.
    ``layout`` 'nchw' makes an eager MobileMamba compute NCHW (CUDA's code path) anywhere;
    ``kernels`` is its custom ops' implementation on that path (a CPU form keeps the twins)."""
    if name in REFERENCES:
        return build_backbone(name)
    cpu_form = form != 'eager' and form_device(form, device) == 'cpu'
    channels_last = False if layout == 'nchw' and form == 'eager' else None
    model = build_backbone(name, channels_last=channels_last,
                           scan_backend='torch' if cpu_form else kernels)
    if form == 'deployed':
        model.switch_to_deploy()
    elif form.startswith('deployed-'):
        model.switch_to_deploy(device=form[len('deployed-'):])
    return model


def measure(name: str, form: str, batch: int, size: int, args) -> Dict[str, Optional[OpCount]]:
    """Eval forward counts, and the training step's when asked (eager form only)."""
    device = torch.device(args.device)
    x = torch.randn(batch, 3, size, size, device=device)
    run = not args.dry_triton
    model = build_model(name, form, args.layout, args.kernels, args.device).to(device)
    result = {'eval': count_forward(model, x, run_triton=run), 'train': None}
    if args.train and form == 'eager':
        model = build_model(name, layout=args.layout, kernels=args.kernels,
                            device=args.device).to(device)
        try:
            result['train'] = count_train_step(model, x, amp_dtype=AMP.get(args.amp),
                                               run_triton=run)
        except ValueError as error:  # a BatchNorm on a 1x1 map cannot train on one image
            print(f'  {name} batch {batch}: no training step ({error})', file=sys.stderr)
    return result


def implementations(count: Optional[OpCount]) -> str:
    """The custom-op calls by implementation, e.g. 'triton 42' or 'torch 7'."""
    if count is None or not count.custom_ops:
        return '-'
    totals: Dict[str, int] = {}
    for (_, impl), n in count.custom_ops.items():
        totals[impl] = totals.get(impl, 0) + n
    return ', '.join(f'{impl} {n}' for impl, n in sorted(totals.items()))


def format_table(rows: List[dict], with_train: bool, precision: str) -> str:
    head = '| model | form | batch | size | launches / eval forward | ratio | syncs'
    rule = '|---|---|---:|---:|---:|---:|---:'
    if with_train:
        head += f' | launches / train step ({precision}) | ratio | casts / train step | syncs'
        rule += '|---:|---:|---:|---:'
    head += ' | custom-op calls'
    rule += '|---'
    lines = [head + ' |', rule + '|']
    refs = {(r['batch'], r['size']): r for r in rows if r['model'] == REFERENCE}

    def ratio(row, key):
        ref = refs.get((row['batch'], row['size']))
        if ref is None or row[key] is None or ref[key] is None or not ref[key].total:
            return '-'
        return f'{row[key].total / ref[key].total:.2f}x'

    for row in rows:
        ev = row['eval']
        cells = [row['model'], row['form'], str(row['batch']), str(row['size']), str(ev.total),
                 ratio(row, 'eval'), str(ev.syncs)]
        if with_train:
            tr = row['train']
            cells += ([str(tr.total), ratio(row, 'train'), str(tr.casts), str(tr.syncs)]
                      if tr is not None else ['-'] * 4)
        cells.append(implementations(row['train'] if row['train'] is not None else ev))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def format_top(rows: List[dict], top: int) -> str:
    blocks = []
    for row in rows:
        for key in ('eval', 'train'):
            count = row[key]
            if count is None:
                continue
            title = (f'{row["model"]} {row["form"]}, batch {row["batch"]}, {row["size"]}x'
                     f'{row["size"]}, {"eval forward" if key == "eval" else "train step"}')
            casts = ', '.join(f'{k} {v}' for k, v in count.cast_ops.most_common())
            blocks.append(f'{title}: {count.summary(top)}'
                          + (f'\n  casts: {casts}' if casts else ''))
    return '\n\n'.join(blocks)


def main() -> int:
    args = parse_args()
    import mmmobilemamba  # noqa: F401  registers MobileMamba
    from mmdet.utils import register_all_modules
    register_all_modules()
    if args.kernels is None:
        args.kernels = 'triton' if _triton_imports() else 'torch'
    interpreted = args.kernels == 'triton' and torch.device(args.device).type != 'cuda'
    with triton_interpreter() if interpreted else contextlib.nullcontext():
        return run(args, interpreted)


def run(args, interpreted: bool) -> int:
    """Count every model and setting; print (and write) the report."""
    torch.manual_seed(0)
    models = [(f'MobileMamba-{arch.upper()}', arch, form) for arch in args.arch
              for form in args.form]
    models += [(REFERENCES[key][0], key, 'eager') for key in args.references]
    rows = []
    for batch in args.batch:
        for size in args.size:
            for label, name, form in models:
                counts = measure(name, form, batch, size, args)
                rows.append(dict(model=label, form=form, batch=batch, size=size, **counts))
                print(f'  {label} {form} b{batch} {size}: {counts["eval"].total} '
                      'launches/forward', file=sys.stderr)
    precision = args.amp or 'fp32'
    how = ("Triton's interpreter" if interpreted else args.device) + (
        ', launches counted without running the kernels' if args.dry_triton else '')
    notes = [f'Kernel launches: ATen operators (views, allocations excluded; inside custom ops '
             f'too) and Triton kernels, on {args.device}, torch {torch.__version__}; '
             f"MobileMamba's CUDA code path with its custom ops on '{args.kernels}' ({how}), "
             'its CPU forms on the twins; eval forward under torch.no_grad after one uncounted '
             'forward.']
    if args.train:
        notes.append(f'Train step ({precision}{" autocast" if args.amp else ""}, eager model '
                     'in train mode): zero_grad(set_to_none), forward, loss = sum of the output '
                     'means, backward, SGD(lr=0.01, momentum=0.9, foreach=True).step(), after '
                     'one uncounted step.')
    if any(r['model'] == REFERENCE for r in rows):
        notes.append(f'Ratios are to {REFERENCE} at the same batch and size.')
    text = ' '.join(notes) + '\n\n' + format_table(rows, args.train, precision) + '\n'
    if args.top:
        text += f'\nMost frequent ops (top {args.top}):\n\n' + format_top(rows, args.top) + '\n'
    publish_report(text, args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
