# Runs inside GIMP 3: writes the Tessera procedure's registration to
# /mnt/procedure.json.

import json

from gi.repository import Gimp, GObject

procedure = Gimp.get_pdb().lookup_procedure("plug-in-tessera-upscale")
described = {
    "menu_paths": list(procedure.get_menu_paths()),
    "menu_label": procedure.get_menu_label(),
    "image_types": procedure.get_image_types(),
    "arguments": [],
    "return_values": [{"name": spec.name} for spec in procedure.get_return_values()],
}
for spec in procedure.get_arguments():
    entry = {"name": spec.name}
    default = spec.get_default_value()
    if isinstance(default, (int, float, str)) and not hasattr(default, "value_nick"):
        entry["default"] = default
    if spec.value_type == GObject.TYPE_STRING:
        entry["default"] = default
    if hasattr(spec, "minimum"):
        entry["minimum"], entry["maximum"] = spec.minimum, spec.maximum
    if isinstance(spec, Gimp.ParamChoice):
        entry["default"] = Gimp.param_spec_choice_get_default(spec)
        entry["choices"] = list(Gimp.param_spec_choice_get_choice(spec).list_nicks())
    described["arguments"].append(entry)
with open("/mnt/procedure.json", "w") as f:
    json.dump(described, f)
