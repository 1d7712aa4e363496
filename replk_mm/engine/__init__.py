"""Training machinery: layer-wise lr decay, CPU distributed runs, crash-safe checkpoints and exact
resumption, the non-finite loss guard, the tools' shared front end."""
from .checkpoint_hook import AtomicCheckpointHook, AtomicLocalBackend
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .layer_decay import LayerDecayOptimWrapperConstructor
from .nonfinite_loss import NonFiniteLossError, NonFiniteLossHook

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'CPUDistributedDataParallel',
    'LayerDecayOptimWrapperConstructor', 'NonFiniteLossError', 'NonFiniteLossHook',
    'setup_cpu_distributed'
]
