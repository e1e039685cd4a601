"""The GPU check's backbone table: measurement bookkeeping, targets and report (on the CPU,
with tiny stand-in models; the real backbones run in tests/tools/test_benchmark_gpu.py)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mmmobilemamba.analysis import gpu_benchmark as gb
from mmmobilemamba.analysis.backbones import backbone_label


class TinyNet(nn.Module):
    """Two maps, like a backbone; ``fail_forms`` makes chosen forms raise."""

    def __init__(self, fail_when_deployed_for=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.deployed_for = None
        self.fail_when_deployed_for = fail_when_deployed_for

    def forward(self, x):
        if self.deployed_for is not None and self.deployed_for == self.fail_when_deployed_for:
            raise RuntimeError('this deploy form is broken\nsecond line')
        a = torch.relu(self.bn(self.conv1(x)))
        return a, self.conv2(a)


class TinyMamba(TinyNet):

    def switch_to_deploy(self, device=None):
        self.deployed_for = str(device)
        return self


@pytest.fixture
def tiny_models(monkeypatch):
    built = []

    def build(key):
        model = TinyMamba(fail_when_deployed_for='cpu') if key == 't2' else (
            TinyMamba() if key == 'b1' else TinyNet())
        built.append(key)
        return model.eval()

    monkeypatch.setattr(gb, 'build_backbone', build)
    return built


def _bench(**kwargs):
    args = dict(device='cpu', archs=['b1'], references=['regnetx_800mf'],
                settings=[(1, 32)], dtypes=['fp32'], repeats=1, warmup=0,
                compile_backend='eager', compile_at=[(1, 32)], compile_dtypes=['fp32'],
                cpu_form_at=[(1, 32)], train_setting=(2, 32), kernels_at=(1, 32),
                graph_size=32)
    args.update(kwargs)
    return gb.GpuBenchmark(**args)


def test_parse_setting():
    assert gb.parse_setting('32x512') == (32, 512)
    assert gb.parse_setting('1X64') == (1, 64)
    for bad in ('512', '0x64', 'axb'):
        with pytest.raises(ValueError, match='BATCHxSIZE|>= 1'):
            gb.parse_setting(bad)


def test_labels_and_unknown_keys():
    assert backbone_label('b1') == 'MobileMamba-B1'
    assert backbone_label('regnetx_800mf') == 'RegNetX-800MF'
    with pytest.raises(KeyError, match='unknown backbone'):
        backbone_label('vit')
    with pytest.raises(KeyError, match='unknown backbone'):
        _bench(references=['vgg'])


def test_every_cpu_measurement_and_the_report(tiny_models):
    bench = _bench(archs=['b1', 't2'])
    saved = []
    bench.on_update = lambda results: saved.append(len(results['eval']))
    results = bench.run()
    ev = {(r['model'], r['form']): r for r in results['eval']}
    assert set(ev) == {('MobileMamba-B1', f) for f in gb.MM_FORMS} | {
        ('MobileMamba-T2', f) for f in gb.MM_FORMS} | {
        ('RegNetX-800MF', 'eager'), ('RegNetX-800MF', 'compiled')}
    for key in (('MobileMamba-B1', 'eager'), ('MobileMamba-B1', 'deployed'),
                ('MobileMamba-B1', 'compiled'), ('RegNetX-800MF', 'compiled')):
        assert ev[key]['ms'] > 0 and ev[key]['first_call_s'] > 0, key
    # T2's deploy forms raise: reported in their cells, the rest goes on
    for form in ('deployed', 'deployed-cpu-form'):
        assert ev[('MobileMamba-T2', form)]['error'] == (
            'error: RuntimeError: this deploy form is broken')
    assert ev[('MobileMamba-T2', 'compiled')]['error'].startswith('error: ')
    assert ev[('MobileMamba-T2', 'eager')]['ms'] > 0
    assert bench.model('b1', 'deployed').deployed_for == 'cpu'
    assert [(r['model'], r['dtype']) for r in results['train']] == [
        ('MobileMamba-B1', 'fp32'), ('MobileMamba-T2', 'fp32'), ('RegNetX-800MF', 'fp32')]
    assert all(r['ms'] > 0 and r['peak_gib'] is None for r in results['train'])
    assert results['kernels'] == [] and results['graphs'] == []
    assert any('CUDA only' in n for n in results['notes'])
    assert saved and saved[-1] == len(results['eval'])  # updated after every cell
    # the built CPU models stay as built (every form is a copy)
    assert tiny_models.count('b1') == 1

    text = gb.format_report(results)
    for section in ('## Targets', '## Backbone eval forward', '## Backbone training step',
                    '## GPU kernels per forward', '## Batch-1 latency', '## Notes'):
        assert section in text
    assert '| MobileMamba-B1 | compiled |' in text and 'x of compiled' in text
    assert 'Compile (first call): MobileMamba-B1 32²×b1 fp32' in text
    assert 'error: RuntimeError: this deploy form is broken' in text
    assert '**not measured** B1 eval 512²×b32 fp32' in text  # measured at 32² only


def test_target_cells_measure_what_the_targets_need(tiny_models):
    """Only the targets' cells, part by part, in order; with them the targets are measured
    (synthetic stand-ins: the figures' values do not matter here)."""
    bench = _bench(archs=['b1'], references=['regnetx_800mf'])
    cells = [cell for part in ('eval', 'train', 'compiled') for cell in gb.TARGET_CELLS[part]]
    # the stand-ins run at 32²: the same cells, smaller
    small = [(sec, key, form, 1, 32, dtype) for sec, key, form, _, _, dtype in cells]
    results = bench.run_cells(small)
    assert [(r['model'], r.get('form'), r['dtype']) for r in results['eval']] == [
        ('RegNetX-800MF', 'eager', 'fp32'), ('MobileMamba-B1', 'deployed', 'fp32'),
        ('RegNetX-800MF', 'eager', 'bf16'), ('MobileMamba-B1', 'deployed', 'bf16'),
        ('MobileMamba-B1', 'deployed-channels-last', 'bf16'), ('RegNetX-800MF', 'eager', 'bf16'),
        ('MobileMamba-B1', 'compiled', 'bf16')]
    assert all(r['ms'] > 0 for r in results['eval'] + results['train'])
    assert [(r['model'], r['dtype']) for r in results['train']] == [
        ('RegNetX-800MF', 'fp32'), ('MobileMamba-B1', 'fp32'), ('RegNetX-800MF', 'bf16'),
        ('MobileMamba-B1', 'bf16')]
    assert bench.model('b1', 'deployed-channels-last').channels_last is True
    measured = {t.name.split(':')[0] for t in gb.evaluate_targets(results, batch=1, size=32)
                if t.status != 'not measured'}
    assert {'B1 eval 32²×b1 fp32', 'B1 eval 32²×b1 bf16', 'B1 compiled 32²×b1 bf16'} <= measured


def test_runs_merge_into_one_report():
    """The GPU check measures in several processes; their results render as one."""
    first = dict(_synthetic(), notes=['a note'])
    later = {'environment': 'later', 'eval': [dict(model='MobileMamba-T2', form='eager',
                                                   batch=32, size=512, dtype='fp32', ms=7.0)],
             'train': [], 'kernels': [], 'graphs': [], 'notes': ['a note', 'another']}
    merged = gb.merge_results([first, later])
    assert merged['environment'] == 'synthetic' and merged['notes'] == ['a note', 'another']
    assert len(merged['eval']) == len(first['eval']) + 1
    assert [t.status for t in gb.evaluate_targets(merged)][:2] == ['PASS', 'PASS']
    assert '| MobileMamba-T2 | eager |' in gb.format_report(merged)


def test_budget_skips_the_rest_with_a_note(tiny_models):
    bench = _bench(budget_s=0.0)
    results = bench.run()
    assert results['eval'] and all(r.get('skipped') for r in results['eval'])
    assert any('time budget' in n for n in results['notes'])
    assert 'skipped (budget)' in gb.format_report(results)


def test_compiles_wait_for_enough_budget(tiny_models):
    bench = _bench(budget_s=30.0, forms=['eager', 'compiled'])  # < COMPILE_RESERVE_S left
    results = bench.run()
    compiled = [r for r in results['eval'] if r['form'] == 'compiled']
    assert compiled and all('budget left' in r['skipped'] for r in compiled)
    assert all(r['ms'] > 0 for r in results['eval'] if r['form'] == 'eager')


def test_rejects_bad_options():
    with pytest.raises(ValueError, match='unknown form'):
        _bench(forms=['jit'])
    with pytest.raises(ValueError, match='dtype'):
        _bench(dtypes=['fp16'])
    with pytest.raises(ValueError, match='compile mode'):
        _bench(compile_mode='fast')


def test_counts_device_kernels_only():
    cpu = 'DeviceType.CPU'
    events = [SimpleNamespace(device_type='DeviceType.CUDA', name='void gemm_kernel'),
              SimpleNamespace(device_type='DeviceType.CUDA', name='Memcpy HtoD'),
              SimpleNamespace(device_type='DeviceType.CUDA', name='Memset (Device)'),
              SimpleNamespace(device_type=cpu, name='aten::conv2d'),
              SimpleNamespace(device_type='CUDA', name='elementwise'),
              SimpleNamespace(name='no device type')]
    assert gb.count_device_kernels(events) == 2
    from torch.autograd import DeviceType
    assert gb.count_device_kernels([SimpleNamespace(device_type=DeviceType.CUDA, name='k')]) == 1


def _synthetic(b1_deployed=(14.0, 15.0), ref=(10.0, 10.0), compiled=(9.0, 6.5),
               train_b1=(40.0, 35.0), train_ref=(28.0, 26.0)):
    ev = []
    for dtype, b1, r in zip(('fp32', 'bf16'), b1_deployed, ref):
        ev.append(dict(model='MobileMamba-B1', form='deployed', batch=32, size=512, dtype=dtype,
                       ms=b1))
        ev.append(dict(model='RegNetX-800MF', form='eager', batch=32, size=512, dtype=dtype,
                       ms=r))
    ev.append(dict(model='MobileMamba-B1', form='compiled', batch=32, size=512, dtype='bf16',
                   ms=compiled[0], first_call_s=50.0))
    ev.append(dict(model='RegNetX-800MF', form='compiled', batch=32, size=512, dtype='bf16',
                   ms=compiled[1], first_call_s=20.0))
    train = []
    for dtype, b1, r in zip(('fp32', 'bf16'), train_b1, train_ref):
        train.append(dict(model='MobileMamba-B1', dtype=dtype, batch=16, size=512, ms=b1,
                          peak_gib=3.0))
        train.append(dict(model='RegNetX-800MF', dtype=dtype, batch=16, size=512, ms=r,
                          peak_gib=2.0))
    return {'environment': 'synthetic', 'eval': ev, 'train': train, 'kernels': [],
            'graphs': [], 'notes': []}


WHOLE = [dict(task='Mask R-CNN', label='MobileMamba-B1', params_m=30.0, latency_ms=39.0,
              train_ms=99.0),
         dict(task='Mask R-CNN', label='RegNetX-800MF', params_m=25.0, latency_ms=24.0,
              train_ms=83.1),
         dict(task='Semantic FPN', label='MobileMamba-B4', params_m=20.0, latency_ms=21.0,
              train_ms=79.3),
         dict(task='Semantic FPN', label='ResNet-50', params_m=28.0, latency_ms=8.9,
              train_ms=35.7)]


def test_targets_pass_and_fail():
    targets = {t.name: t for t in gb.evaluate_targets(_synthetic(), WHOLE)}
    status = {name: t.status for name, t in targets.items()}
    deployed = 'B1 deployed for CUDA (BN folded, Triton kernels, NCHW)'
    regnet = 'RegNetX-800MF eager (BN unfolded)'
    trained = 'eager, train mode, frozen BN statistics'
    whole = 'the whole model, same head and neck, eager'
    assert status == {  # each names the forms it compares
        f'B1 eval 512²×b32 fp32: {deployed} vs {regnet}': 'PASS',                  # 1.40x
        f'B1 eval 512²×b32 bf16: {deployed} vs {regnet}': 'PASS',                  # 1.50x
        f'B1 compiled 512²×b32 bf16: torch.compile of the CUDA deploy form vs {regnet}':
            'PASS',                                                                 # 0.90x
        'B1 compiled 512²×b32 bf16 vs RegNetX-800MF compiled (both torch.compile)': 'PASS',
        f'B1 training step fp32 vs RegNetX-800MF (both {trained})': 'PASS',        # 1.43x
        f'B1 training step bf16 vs RegNetX-800MF (both {trained})': 'PASS',        # 1.35x
        'B1 training step bf16 autocast vs fp32 (bf16 faster)': 'PASS',           # 0.875x
        f'Mask R-CNN B1 training step vs RegNetX-800MF ({whole})': 'PASS',         # 1.19x
        f'Semantic FPN B4 training step vs ResNet-50 ({whole})': 'FAIL',           # 2.22x
    }
    fpn = targets[f'Semantic FPN B4 training step vs ResNet-50 ({whole})']
    assert fpn.measured == pytest.approx(79.3 / 35.7)
    assert fpn.line().startswith('- **FAIL** Semantic FPN') and '2.22x' in fpn.line()


def test_targets_fail_today_and_ties_fail_the_strict_one():
    today = _synthetic(b1_deployed=(54.6, 20.7), ref=(10.0, 10.7), compiled=(14.6, 5.87),
                       train_b1=(72.1, 72.1), train_ref=(28.0, 26.8))
    targets = gb.evaluate_targets(today)
    assert [t.status for t in targets] == ['FAIL'] * 7 + ['not measured'] * 2
    assert '(target < 1x; first GPU run 1.09x): 1.00x' in targets[6].line()


def test_report_with_whole_models_and_notes():
    text = gb.format_report(_synthetic(), WHOLE, 'torch x, cuda; latency: test_step',
                            notes=['CUDA tests (pytest -m cuda): 82 passed, 3 skipped'])
    assert text.startswith('# MobileMamba on the GPU: backbone table and whole models')
    assert '- CUDA tests (pytest -m cuda): 82 passed, 3 skipped' in text
    assert '## Whole models' in text and '| Semantic FPN | MobileMamba-B4 |' in text
    assert ('**FAIL** Semantic FPN B4 training step vs ResNet-50 (the whole model, same head '
            'and neck, eager) (target <= 1.3x; first GPU run 2.22x): 2.22x') in text
    assert '| MobileMamba-B1 | 40.00 | 1.43x | 35.00 | 1.35x | 0.88x | 3.00 / 3.00 |' in text
    # a report renders from nothing, too (a backbone step that died at once)
    assert '**not measured**' in gb.format_report({'environment': 'unreadable'})
