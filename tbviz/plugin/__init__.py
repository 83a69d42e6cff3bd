"""The tbviz dashboard: a tab of its own inside the stock TensorBoard.

Installing ``tbviz`` registers :class:`~tbviz.plugin.tbviz_plugin.TbvizLoader`
under the ``tensorboard_plugins`` entry point, so ``tensorboard --logdir runs``
shows a "tbviz" tab for every run a tbviz callback wrote panels to. The tab
reads only what TensorBoard's data provider serves (the default fast loading
included) and never imports TensorFlow.
"""
