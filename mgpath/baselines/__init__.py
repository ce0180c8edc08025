"""Baselines MGPATH is compared with, under the same splits, features, seeds and fold runner (see
:mod:`mgpath.baselines.modules` for the table of methods and their published defaults)."""
from mgpath.baselines.mil import ABMIL, CLAMSB, DSMIL, PoolingLinear
from mgpath.baselines.modules import (
    ABMILModule,
    CLAMModule,
    CoOpModule,
    DSMILModule,
    PoolingModule,
    TransMILModule,
    count_parameters,
)
from mgpath.baselines.mscpt import MSCPT
from mgpath.baselines.mscpt_module import MSCPTModule
from mgpath.baselines.prompt_modules import TOPModule, TowerZeroShotModule, ViLaMILModule
from mgpath.baselines.top import TOP
from mgpath.baselines.transmil import TransMIL
from mgpath.baselines.vila import ViLaMIL

__all__ = [
    "ABMIL",
    "CLAMSB",
    "DSMIL",
    "MSCPT",
    "TOP",
    "ABMILModule",
    "CLAMModule",
    "CoOpModule",
    "DSMILModule",
    "MSCPTModule",
    "PoolingLinear",
    "PoolingModule",
    "TOPModule",
    "TowerZeroShotModule",
    "TransMIL",
    "TransMILModule",
    "ViLaMIL",
    "ViLaMILModule",
    "count_parameters",
]
