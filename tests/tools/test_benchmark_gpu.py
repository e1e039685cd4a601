"""tools/analysis/benchmark_gpu.py on the CPU (tiny settings), tools/analysis/benchmark.py
--compile and --json, and tools/analysis/gpu_check.sh's plumbing (with a stand-in Python)."""
import json
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'analysis' / 'benchmark_gpu.py'
BENCHMARK = ROOT / 'tools' / 'analysis' / 'benchmark.py'
GPU_CHECK = ROOT / 'tools' / 'analysis' / 'gpu_check.sh'
SECTIONS = ('## Targets', '## Backbone eval forward', '## Backbone training step',
            '## GPU kernels per forward', '## Batch-1 latency')


def run_tool(script, *args):
    argv = sys.argv
    sys.argv = [str(script)] + [str(a) for a in args]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(script), run_name='__main__')
    finally:
        sys.argv = argv
    return exit_.value.code


def test_tiny_cpu_run_writes_one_report_and_the_json(tmp_path, capsys):
    pytest.importorskip('mmdet')
    md, js = tmp_path / 'report.md', tmp_path / 'run.json'
    code = run_tool(TOOL, '--device', 'cpu', '--settings', '1x64', '--dtypes', 'fp32',
                    '--archs', 'b1', '--references', 'regnetx_800mf', '--forms', 'eager',
                    'deployed', 'deployed-cpu-form', '--cpu-form-at', '1x64', '--repeats', '1',
                    '--warmup', '0', '--train-setting', '1x64', '--train-models', 'b1',
                    '--json', js, '--markdown', md)
    assert code == 0
    out = capsys.readouterr().out
    for section in SECTIONS:
        assert section in out
    rows = [line for line in out.splitlines() if line.startswith('| MobileMamba-B1 |')
            or line.startswith('| RegNetX-800MF |')]
    assert [r.split('|')[2].strip() for r in rows[:4]] == [
        'eager', 'deployed', 'deployed-cpu-form', 'eager']
    assert '| RegNetX-800MF | eager |' in out and '(1.00x)' in out
    assert 'kernels per forward: skipped (CUDA only)' in out
    assert md.read_text().startswith('Command: `python ') and '(partial)' not in md.read_text()
    saved = json.loads(js.read_text())
    assert len(saved['eval']) == 4 and all(r['ms'] > 0 for r in saved['eval'])
    assert [r['model'] for r in saved['train']] == ['MobileMamba-B1']


@pytest.mark.slow
def test_tiny_cpu_run_compiles_with_the_eager_backend(tmp_path, capsys):
    """The compiled form end to end (dynamo traces B1; the 'eager' backend skips inductor)."""
    pytest.importorskip('mmdet')
    code = run_tool(TOOL, '--device', 'cpu', '--settings', '1x64', '--dtypes', 'fp32',
                    '--archs', 'b1', '--references', 'regnetx_800mf', '--forms', 'eager',
                    'compiled', '--compile-at', '1x64', '--compile-dtypes', 'fp32',
                    '--compile-backend', 'eager', '--repeats', '1', '--warmup', '0',
                    '--train-setting', 'none')
    assert code == 0
    out = capsys.readouterr().out
    assert '| MobileMamba-B1 | compiled |' in out and 'x of compiled)' in out
    assert 'Compile (first call): MobileMamba-B1 64²×b1 fp32' in out


def _whole_model_json(path):
    figures = [dict(task='Mask R-CNN', label='MobileMamba-B1', params_m=30.0, latency_ms=39.0,
                    train_ms=135.2),
               dict(task='Mask R-CNN', label='RegNetX-800MF', params_m=25.0, latency_ms=24.1,
                    train_ms=83.1)]
    path.write_text(json.dumps({'note': 'torch x, cuda; train step: batch 2', 'figures': figures}))


def test_report_from_saved_runs(tmp_path, capsys):
    whole = tmp_path / 'whole.json'
    _whole_model_json(whole)
    run = tmp_path / 'run.json'
    run.write_text(json.dumps({'environment': 'saved', 'eval': [], 'train': [],
                               'kernels': [], 'graphs': [], 'notes': []}))
    md = tmp_path / 'report.md'
    assert run_tool(TOOL, '--from-json', run, '--whole-model-json', whole, '--note',
                    'CUDA tests: 82 passed', '--markdown', md) == 0
    text = md.read_text()
    assert '- CUDA tests: 82 passed' in text and 'torch x, cuda; train step: batch 2' in text
    assert ('**FAIL** Mask R-CNN B1 training step vs RegNetX-800MF (the whole model, same head '
            'and neck, eager) (target <= 1.2x; first GPU run 1.63x): 1.63x') in text
    # missing inputs still give a report saying so
    assert run_tool(TOOL, '--from-json', tmp_path / 'none.json', '--whole-model-json',
                    tmp_path / 'none2.json', '--markdown', md) == 0
    text = md.read_text()
    assert 'backbone results unreadable' in text and 'whole-model figures unreadable' in text
    assert '**not measured**' in text


def test_benchmark_compile_option_times_the_first_call_apart(monkeypatch, capsys):
    pytest.importorskip('mmseg')
    calls = []

    def record(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, 'compile', record)
    config = ROOT / 'configs' / 'quickstart' / 'fpn_mobilemamba_demo-ade.py'
    assert run_tool(BENCHMARK, config, '--shape', '64', '64', '--num-iters', '2',
                    '--warmup', '0', '--compile') == 0
    out = capsys.readouterr().out
    assert calls == [{'mode': 'default'}]
    assert 'first call (compiling, not timed above):' in out and '2 timed iterations' in out
    assert "torch.compile(mode='default') of extract_feat" in out


def test_compare_with_compile_writes_json(monkeypatch, tmp_path, capsys):
    pytest.importorskip('mmseg')
    from mmmobilemamba.analysis import compare
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: calls.append(kw) or fn)
    quick = compare.Comparison(
        'Semantic FPN', compare.Contender('MobileMamba-tiny',
                                          'configs/quickstart/fpn_mobilemamba_demo-ade.py'),
        (compare.Contender('ResNet-18-D8',
                           'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
                           (('model.data_preprocessor.size', (64, 64)),)),),
        shape=(64, 64), num_classes=4)
    monkeypatch.setattr(compare, 'PAPER_COMPARISONS', (quick,))
    js = tmp_path / 'whole.json'
    assert run_tool(BENCHMARK, '--compare', 'Semantic FPN', '--num-iters', '1', '--warmup', '0',
                    '--train-iters', '1', '--no-memory', '--compile', 'reduce-overhead',
                    '--json', js) == 0
    assert calls == [{'mode': 'reduce-overhead'}] * 2
    saved = json.loads(js.read_text())
    assert "torch.compile(mode='reduce-overhead')" in saved['note']
    assert [f['label'] for f in saved['figures']] == ['MobileMamba-tiny', 'ResNet-18-D8']
    assert all(f['first_call_ms'] > 0 and f['train_ms'] > 0 for f in saved['figures'])
    assert 'First call (compiling): Semantic FPN / MobileMamba-tiny' in capsys.readouterr().out


STUB = '''#!{python}
"""A stand-in for the GPU machine's Python: records the calls, fakes the measurements."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ['STUB_CALLS'], 'a') as f:
    f.write(json.dumps(args) + '\\n')
if args[0] == '-c':  # the CUDA check, the nms/roi_align probe
    sys.exit(int(os.environ.get('PROBE_RC', '0')) if 'nms' in args[1] else 0)
if '--from-json' in args:
    os.execv({python!r}, [{python!r}] + args)
if args[:2] == ['-m', 'pytest']:
    print('===== 82 passed, 3 skipped in 96.10s =====')
elif args[0].endswith('benchmark_gpu.py'):
    part = args[args.index('--targets') + 1] if '--targets' in args else 'table'
    cells = {{'eval': [('MobileMamba-B1', 'deployed', 14.0), ('RegNetX-800MF', 'eager', 10.0)],
              'compiled': [('MobileMamba-B1', 'compiled', 9.0)]}}.get(part, [])
    ev = [dict(model=m, form=f, batch=32, size=512, dtype='fp32', ms=ms) for m, f, ms in cells]
    json.dump(dict(environment='stub ' + part, eval=ev, train=[], kernels=[], graphs=[],
                   notes=[]), open(args[args.index('--json') + 1], 'w'))
elif '--compare' in args:
    task = args[args.index('--compare') + 1]
    fig = dict(task=task, params_m=1.0, latency_ms=2.0)
    ours, peer = ('MobileMamba-B4', 'ResNet-50') if task == 'Semantic FPN' else \\
        ('MobileMamba-B1', 'RegNetX-800MF')
    json.dump(dict(note='stub note', figures=[dict(fig, label=ours, train_ms=4.0),
                                              dict(fig, label=peer, train_ms=3.5)]),
              open(args[args.index('--json') + 1], 'w'))
print('ran', ' '.join(args))
'''


def _run_gpu_check(tmp_path, probe_rc=0, *args):
    stub = tmp_path / 'python'
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    calls, out = tmp_path / 'calls.jsonl', tmp_path / 'out'
    env = dict(os.environ, PYTHON=str(stub), OUT=str(out), STUB_CALLS=str(calls),
               PROBE_RC=str(probe_rc),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(['bash', str(GPU_CHECK), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    called = [json.loads(line) for line in calls.read_text().splitlines()]
    return proc, called, out


def _what(call):
    """A call's script and, for the backbone tool, its targets; for the whole models, the
    task."""
    if call[0].startswith('-'):
        return ' '.join(call[:2])[:40]
    name = call[0].split('/')[-1]
    for flag in ('--targets', '--compare'):
        if flag in call:
            return f'{name} {flag} {call[call.index(flag) + 1]}'
    return name


@pytest.mark.parametrize('probe_rc', [0, 1])
def test_gpu_check_measures_the_targets_first(tmp_path, probe_rc):
    """The six targets' measurements first, each a step of its own, then the CUDA tests and
    the rest; every figure ends in one report under $OUT, the targets naming the forms."""
    proc, called, out = _run_gpu_check(tmp_path, probe_rc)
    assert proc.returncode == probe_rc, proc.stdout + proc.stderr
    steps = [_what(c) for c in called if '--from-json' not in c]
    targets = ['benchmark_gpu.py --targets eval', 'benchmark_gpu.py --targets train',
               '-c import torch\nfrom mmcv.ops import nms'[:40]] + \
        (['benchmark.py --compare Mask R-CNN'] if probe_rc == 0 else []) + \
        ['benchmark.py --compare Semantic FPN', 'benchmark_gpu.py --targets compiled']
    assert steps[1:len(targets) + 1] == targets
    rest = steps[len(targets) + 1:]
    assert rest[:2] == ['-m pytest', 'benchmark_gpu.py']
    assert ('benchmark.py' in rest) == (probe_rc == 0)  # RetinaNet FPS
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ['backbone.json', 'gpu_check.log', 'gpu_report.md', 'target_compiled.json',
         'target_eval.json', 'target_semantic_fpn.json', 'target_train.json']
        + (['target_mask_rcnn.json'] if probe_rc == 0 else []))
    report = (out / 'gpu_report.md').read_text()
    assert '- CUDA tests (pytest -m cuda): 82 passed, 3 skipped in 96.10s' in report
    assert ('**PASS** B1 eval 512²×b32 fp32: B1 deployed for CUDA (BN folded, Triton kernels, '
            'NCHW) vs RegNetX-800MF eager (BN unfolded)') in report
    assert ('**PASS** Semantic FPN B4 training step vs ResNet-50 (the whole model, same head '
            'and neck, eager) (target <= 1.3x; first GPU run 2.22x): 1.14x') in report
    assert '| Semantic FPN | MobileMamba-B4 |' in report
    if probe_rc:
        assert 'Mask R-CNN and RetinaNet skipped' in report


def test_gpu_check_quick_stops_after_the_targets(tmp_path):
    proc, called, out = _run_gpu_check(tmp_path, 0, '--quick')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [_what(c) for c in called if '--from-json' not in c]
    assert '-m pytest' not in steps and steps[-1] == 'benchmark_gpu.py --targets compiled'
    assert 'backbone.json' not in {p.name for p in out.iterdir()}
    report = (out / 'gpu_report.md').read_text()
    assert 'gpu_check --quick: the targets only' in report
    assert '**PASS** B1 eval 512²×b32 fp32' in report and '**FAIL**' not in report
    assert _run_gpu_check(tmp_path, 0, '--fast')[0].returncode == 2  # a clear refusal
