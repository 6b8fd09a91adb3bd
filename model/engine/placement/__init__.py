"""Each reference lands where its @tag is: token-localized multi-reference IP-Adapter, training-free
on the standard h94 weights. `binding` decides where each reference goes (pure), `state` carries
one request's maps and masks, `masks` turns maps into masks, `processors` apply them in the UNet.
The first part of the steps runs with the tagged references off, so that the layout forms from the
text first (as FastComposer and Conceptrol do).
"""
