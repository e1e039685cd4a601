#!/usr/bin/env python
"""Check the datasets of a config before training: print every problem, exit 1 on errors.

    python tools/misc/check_dataset.py CONFIG [--full] [--splits train val]
                                       [--cfg-options KEY=VALUE ...]

Without --full: class counts of datasets vs. heads, and the annotation files (boxes, category
ids, mask sizes). --full also decodes every image and reads every segmentation map. The checks
are in mmmobilemamba.engine.dataset_check.
"""
import argparse
import sys

from mmengine.config import DictAction

from mmmobilemamba.engine.dataset_check import check_dataset_config, format_report, has_errors
from mmmobilemamba.engine.config import ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--full', action='store_true',
                        help='also decode every image and read every segmentation map (slow)')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'],
                        choices=['train', 'val', 'test'], help='dataloaders to check')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
        problems = check_dataset_config(cfg, full=args.full, splits=args.splits)
    except (ConfigError, FileNotFoundError) as err:  # no such file, unknown codebase
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(format_report(problems))
    return 1 if has_errors(problems) else 0


if __name__ == '__main__':
    sys.exit(main())
