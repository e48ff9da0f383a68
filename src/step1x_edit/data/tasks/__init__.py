"""Editing operations that need no model: global tone and style transforms, and local edits given a mask or box.

They work on any RGB image (synthetic scenes and real photos alike) and are exact: the target is a pure
function of the source and the parameters.
"""
