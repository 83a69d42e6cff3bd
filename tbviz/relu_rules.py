"""The former name of :mod:`tbviz.backward_rules`, kept so that existing imports work.

>>> from tbviz.relu_rules import relu_rule, gradients, check_rule
>>> check_rule("deconvnet")
'deconvnet'
"""

from tbviz.backward_rules import (RECTIFIERS, RULES, backward_rule, check_rule,  # noqa: F401
                                  gradients, rule_sites)

relu_rule = backward_rule
