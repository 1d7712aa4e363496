"""Training machinery: layer-wise lr decay, CPU distributed runs, the tools' shared front end."""
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = ['CPUDistributedDataParallel', 'LayerDecayOptimWrapperConstructor', 'setup_cpu_distributed']
