from .mobilemamba import ARCH_SETTINGS, MobileMamba

__all__ = ['MobileMamba', 'ARCH_SETTINGS']
