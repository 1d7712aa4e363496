"""The docs cannot rot: tools/misc/check_docs.py over README.md and docs/ (links, anchors, paths,
`--help` of every documented tool, `bash -n`, `make -n`), and the checker itself catches rot."""
import importlib.util
import os
import os.path as osp
import re

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DOCS = osp.join(ROOT, 'docs')


@pytest.fixture(scope='module')
def checker():
    spec = importlib.util.spec_from_file_location(
        'check_docs', osp.join(ROOT, 'tools', 'misc', 'check_docs.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_check_passes(checker):
    files = checker.doc_files()
    assert osp.join(ROOT, 'README.md') in files and len(files) > 3
    assert sum(len(checker.commands(f)) for f in files) > 10
    assert checker.check(files) == []


def test_every_page_reachable_from_readme():
    readme = open(osp.join(ROOT, 'README.md')).read()
    assert '(docs/index.md)' in readme
    index = open(osp.join(DOCS, 'index.md')).read()
    pages = sorted(p for p in os.listdir(DOCS) if p.endswith('.md') and p != 'index.md')
    unlinked = [p for p in pages if f'({p})' not in index and f'({p}#' not in index]
    assert unlinked == [], f'docs/index.md does not link {unlinked}'


def test_checker_finds_rot(checker, tmp_path):
    page = tmp_path / 'page.md'
    page.write_text(
        '# Title\n\n## A section\n\n[ok](#a-section) [bad anchor](#nowhere) [gone](missing.md)\n'
        '`[not a link](nowhere.md)` [web](https://example.org)\n\n'
        '```bash\n'
        'python tools/train.py configs/nope/missing.py  # [gpu]\n'
        'python tools/train.py CONFIG --work-dir work_dirs/x\n'
        'make -n no-such-target\n'
        'bash tools/dist_train.sh \\\n  configs/demo/upernet_replknet-demo_ade20k-demo.py 2\n'
        '```\n\n```\nnot a command: configs/nope.py\n```\n')
    cmds = checker.commands(str(page))
    assert [c.text for c in cmds][-1] == (
        'bash tools/dist_train.sh configs/demo/upernet_replknet-demo_ade20k-demo.py 2')
    assert cmds[0].tags == {'gpu'} and len(cmds) == 4
    errors = checker.check([str(page)])
    assert any('#nowhere' in e for e in errors)
    assert any('missing.md' in e for e in errors)
    assert not any('nowhere.md' in e or 'example.org' in e for e in errors)
    assert any('configs/nope/missing.py, which does not exist' in e for e in errors)
    assert any('no-such-target' in e for e in errors)
    assert len(errors) == 4, errors


def test_slugs_match_github(checker):
    assert checker.slug('Deploy (re-parameterization)') == 'deploy-re-parameterization'
    assert checker.slug('`make demo`: the CPU demo') == 'make-demo-the-cpu-demo'
    assert checker.slug('SyncBN on one GPU?') == 'syncbn-on-one-gpu'


def test_help_failure_is_reported(checker, tmp_path):
    script = tmp_path / 'broken_tool.py'
    script.write_text('raise RuntimeError("import-time failure")\n')
    errors = checker.run_help([str(script)])
    assert len(errors) == 1 and re.search('import-time failure', errors[0])
