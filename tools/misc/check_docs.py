"""Check that README.md and docs/*.md cannot rot: every relative link and #anchor resolves, every
repository path a shell command names exists, every tool a command runs answers ``--help``, every
shell script parses (``bash -n``) and every make target resolves (``make -n``).

    python tools/misc/check_docs.py             # the CI check (seconds, no GPU, no dataset)
    python tools/misc/check_docs.py --run-all   # run every documented command for real (release)

Commands are the lines of ```bash / ```sh / ```shell / ```console blocks. A trailing comment tag says
what a command needs beyond a CPU and the repository: ``[gpu]``, ``[data]`` (the real dataset),
``[download]`` (an authors' checkpoint), ``[slow]`` (long on a CPU); ``--run-all --skip gpu data``
leaves such commands out. A command tagged ``[ci]`` is cheap and runs for real in the CI check too.
"""
import argparse
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Sequence, Set, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHELL_LANGS = {'bash', 'sh', 'shell', 'console'}
# Top-level folders whose paths must exist when a command names them (outputs such as work_dirs/
# and data/ are created by the commands themselves).
REPO_DIRS = ('tools/', 'configs/', 'docs/', 'replk_mm/', 'tests/', 'requirements/', '.ci/')
TAGS = ('gpu', 'data', 'download', 'slow')
CI_TAG = 'ci'  # cheap: run for real by the CI check
FENCE = re.compile(r'^(\s*)(```+|~~~+)\s*([\w+-]*)')
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


@dataclass
class Command:
    """One documented shell command and where it was found."""
    text: str
    file: str
    line: int
    tags: Set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f'{osp.relpath(self.file, ROOT)}:{self.line}'


def doc_files(root: str = ROOT) -> List[str]:
    """README.md and every markdown page under docs/."""
    files = [osp.join(root, 'README.md')]
    docs = osp.join(root, 'docs')
    for folder, _, names in sorted(os.walk(docs)):
        files += [osp.join(folder, n) for n in sorted(names) if n.endswith('.md')]
    return [f for f in files if osp.isfile(f)]


def _blocks(path: str) -> Iterator[Tuple[str, int, List[str]]]:
    """``(language, first line number, lines)`` of each fenced code block."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, lang, start = match.group(2), match.group(3).lower(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, start + 1, body


def prose_lines(path: str) -> Iterator[Tuple[int, str]]:
    """``(line number, text)`` of the lines outside fenced code blocks."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    inside = None
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if match and (inside is None or match.group(2).startswith(inside)):
            inside = None if inside else match.group(2)
            continue
        if inside is None:
            yield number, line


def commands(path: str) -> List[Command]:
    """The shell commands of a markdown file (continuation lines joined, prompts stripped)."""
    found = []
    for lang, start, body in _blocks(path):
        if lang not in SHELL_LANGS:
            continue
        pending, first = '', 0
        for offset, line in enumerate(body):
            text = line.strip()
            if lang == 'console':
                if not text.startswith('$ ') and not pending:
                    continue  # output lines
                text = text[2:] if text.startswith('$ ') else text
            if not pending:
                first = start + offset
            if text.endswith('\\'):
                pending += text[:-1].rstrip() + ' '
                continue
            text = (pending + text).strip()
            pending = ''
            if not text or text.startswith('#'):
                continue
            code, _, comment = _split_comment(text)
            tags = set(re.findall(r'\[(\w+)\]', comment)) & {*TAGS, CI_TAG}
            found.append(Command(code.strip(), path, first, tags))
    return found


def _split_comment(text: str) -> Tuple[str, str, str]:
    """``(code, '#', comment)``: the first ``#`` outside quotes that starts a word."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in '\'"':
            quote = char
        elif char == '#' and (i == 0 or text[i - 1].isspace()):
            return text[:i], '#', text[i + 1:]
    return text, '', ''


def simple_commands(text: str) -> List[List[str]]:
    """The argument lists of a command line split at ``&&``, ``||``, ``;`` and ``|``, without
    leading ``VAR=value`` assignments."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        return [text.split()]
    parts, current = [], []
    for token in tokens:
        if token in ('&&', '||', ';', '|'):
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    result = []
    for part in parts:
        while part and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', part[0]):
            part = part[1:]
        if part:
            result.append(part)
    return result


def _is_python(word: str) -> bool:
    return osp.basename(word).startswith('python')


def check_paths(cmd: Command) -> List[str]:
    """Repository paths the command names that do not exist."""
    errors = []
    for argv in simple_commands(cmd.text):
        for token in argv:
            path = token.split('=', 1)[1] if token.startswith('--') and '=' in token else token
            if not path.startswith(REPO_DIRS) and path not in ('Makefile', 'README.md'):
                continue
            if any(c in path for c in '*<>{}$') or re.search(r'[A-Z]{3,}', path):
                continue  # a pattern or a placeholder (CONFIG, OUT_DIR)
            if not osp.exists(osp.join(ROOT, path)):
                errors.append(f'{cmd.where}: `{cmd.text}` names {path}, which does not exist')
    return errors


def cheap_checks(cmd: Command) -> Tuple[Set[str], List[List[str]]]:
    """What the CI check runs for a command: (python scripts to ask for --help, other checks)."""
    scripts, checks = set(), []
    for argv in simple_commands(cmd.text):
        if _is_python(argv[0]) and len(argv) > 1 and argv[1].endswith('.py'):
            if osp.isfile(osp.join(ROOT, argv[1])):
                scripts.add(argv[1])
        elif argv[0] in ('bash', 'sh') and len(argv) > 1 and argv[1].endswith('.sh'):
            if osp.isfile(osp.join(ROOT, argv[1])):
                checks.append(['bash', '-n', argv[1]])
        elif argv[0] == 'make':
            checks.append(['make', '-n', *argv[1:]])
    return scripts, checks


# Documented commands say `python`: run them with this interpreter (the project's venv) first on PATH.
ENV = dict(os.environ, PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))

HELP_RUNNER = r'''
import contextlib, io, runpy, sys
failed = []
for script in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [script, '--help']
    code = 'no exit'
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(script, run_name='__main__')
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = f'{type(exc).__name__}: {exc}'
    if code not in (0, None) or 'usage' not in out.getvalue().lower():
        failed.append(f'{script} --help: exit {code}: {out.getvalue().strip()[-300:]}')
print('\n'.join(failed))
sys.exit(1 if failed else 0)
'''


def run_help(scripts: Sequence[str]) -> List[str]:
    """``python SCRIPT --help`` for every script, in one interpreter (imports are shared)."""
    if not scripts:
        return []
    proc = subprocess.run([sys.executable, '-c', HELP_RUNNER, *sorted(scripts)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode == 0:
        return []
    return [line for line in proc.stdout.splitlines() if '--help:' in line] or [proc.stdout[-500:]]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'`|\*\*?|_(?=\w)|(?<=\w)_', '', heading).strip().lower()
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path: str) -> Set[str]:
    seen: Dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f'{base}-{n}')
    return result


def check_links(path: str) -> List[str]:
    """Relative links that point nowhere, and #anchors that match no heading."""
    errors = []
    for number, line in prose_lines(path):
        line = re.sub(r'`[^`]*`', '', line)  # links inside inline code are not links
        for target in LINK.findall(line):
            if re.match(r'^[a-z]+:', target):
                continue  # http(s), mailto: not checked offline
            file_part, _, anchor = target.partition('#')
            dest = osp.normpath(osp.join(osp.dirname(path), file_part)) if file_part else path
            where = f'{osp.relpath(path, ROOT)}:{number}'
            if not osp.exists(dest):
                errors.append(f'{where}: link {target} points to a missing file')
            elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
                errors.append(f'{where}: link {target}: no heading with anchor #{anchor} in '
                              f'{osp.relpath(dest, ROOT)}')
    return errors


def check(files: Sequence[str]) -> List[str]:
    """The CI check over ``files``: links, paths, --help, bash -n, make -n, and the commands
    tagged ``[ci]`` for real. Returns the errors."""
    errors, scripts, others = [], set(), []
    for path in files:
        errors += check_links(path)
        for cmd in commands(path):
            errors += check_paths(cmd)
            more_scripts, more = cheap_checks(cmd)
            scripts |= more_scripts
            others += [(cmd, argv) for argv in more]
            if CI_TAG in cmd.tags:
                others.append((cmd, ['bash', '-c', cmd.text]))
    errors += run_help(sorted(scripts))
    for cmd, argv in others:
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, check=False, env=ENV)
        if proc.returncode != 0:
            errors.append(f'{cmd.where}: `{" ".join(argv)}` failed: {proc.stdout.strip()[-300:]}')
    return errors


def run_all(files: Sequence[str], skip: Set[str]) -> List[str]:
    """Run every documented command for real from the repository root, in page order."""
    errors = []
    for path in files:
        for cmd in commands(path):
            if cmd.tags & skip:
                print(f'skip {cmd.where}: {cmd.text}  [{", ".join(sorted(cmd.tags))}]')
                continue
            print(f'run  {cmd.where}: {cmd.text}', flush=True)
            if subprocess.run(['bash', '-c', cmd.text], cwd=ROOT, check=False,
                              env=ENV).returncode != 0:
                errors.append(f'{cmd.where}: `{cmd.text}` failed')
    return errors


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('files', nargs='*', help='markdown files (default: README.md, docs/)')
    parser.add_argument('--run-all', action='store_true',
                        help='run every documented command for real (minutes to hours)')
    parser.add_argument('--skip', nargs='*', default=[], choices=TAGS,
                        help='with --run-all: leave out commands with these tags')
    args = parser.parse_args(argv)
    files = [osp.abspath(f) for f in args.files] or doc_files()
    errors = check(files)
    if args.run_all and not errors:
        errors = run_all(files, set(args.skip))
    for error in errors:
        print(error, file=sys.stderr)
    n_cmds = sum(len(commands(f)) for f in files)
    print(f'{len(files)} files, {n_cmds} commands: '
          f'{"OK" if not errors else f"{len(errors)} problem(s)"}')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
