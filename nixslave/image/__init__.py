"""Operations on existing disk images, done offline through libguestfs.

An image is inspected without booting it and without trusting it: drives are
added read-only with an explicit format, and everything is read from the
image itself (its manifest, its store), never from host state.
"""

from nixslave.image.inspect import ImageReport, inspect_image, inspect_images
from nixslave.image.install import InstallReport, install
from nixslave.image.repair import Finding, Health, RepairReport, health, repair
from nixslave.image.upgrade import UpgradeReport, upgrade

# The operations are the package's API: ``nixslave.image.upgrade(...)`` is the
# function (bound after its module loaded, so the name is not the module's).
__all__ = ["Finding", "Health", "ImageReport", "InstallReport", "RepairReport",
           "UpgradeReport", "health", "inspect_image", "inspect_images", "install",
           "repair", "upgrade"]
