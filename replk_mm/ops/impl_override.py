"""How a user overrides an op's automatic implementation choice: an environment variable for the
process, a context manager for a block (the innermost block wins over the variable)."""
import contextlib
import os
from typing import Iterator, List, Sequence


class ImplOverride:
    """``'auto'`` or one of ``impls``, as requested by :meth:`use` blocks or the variable ``env``.

    Args:
        env: the environment variable (unset or empty: ``'auto'``).
        impls: the implementations besides ``'auto'``.
        what: the op's name in error messages, e.g. ``'depth-wise conv'``.
    """

    def __init__(self, env: str, impls: Sequence[str], what: str) -> None:
        self.env = env
        self.choices = ('auto', ) + tuple(impls)
        self.what = what
        self._forced: List[str] = []

    def check(self, impl: str, source: str) -> None:
        """Raise a ``ValueError`` naming ``source`` and the valid choices unless ``impl`` is one."""
        if impl not in self.choices:
            raise ValueError(f'{source}: unknown {self.what} implementation {impl!r}; choose one '
                             f'of {", ".join(self.choices)}')

    @contextlib.contextmanager
    def use(self, impl: str, source: str) -> Iterator[None]:
        """Request ``impl`` inside the block; ``source`` names the caller in errors."""
        self.check(impl, source)
        self._forced.append(impl)
        try:
            yield
        finally:
            self._forced.pop()

    def requested(self) -> str:
        """The innermost block's choice, else the variable's, else ``'auto'``."""
        if self._forced:
            return self._forced[-1]
        impl = os.environ.get(self.env, 'auto') or 'auto'
        self.check(impl, self.env)
        return impl
