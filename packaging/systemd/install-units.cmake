# Runs at install time (cmake --install, and CPack's install into its staging DESTDIR), from the install(CODE)
# in cmake/TickhostInstall.cmake: writes tickhost.service and tickhost@.service with the absolute paths of the
# prefix they are being installed under, then installs them, the service's host.toml and its plugins.d.
# In: TICKHOST_UNIT_SOURCES, TICKHOST_SERVICE_TOML, TICKHOST_UNIT_STAGE (a build-tree folder), and the
# TICKHOST_UNIT_*_REL folders: relative (under CMAKE_INSTALL_PREFIX) or absolute.
foreach(_v BINDIR SYSCONFDIR DIR)
  if(IS_ABSOLUTE "${TICKHOST_UNIT_${_v}_REL}")
    set(TICKHOST_UNIT_${_v} "${TICKHOST_UNIT_${_v}_REL}")
  else()
    set(TICKHOST_UNIT_${_v} "${CMAKE_INSTALL_PREFIX}/${TICKHOST_UNIT_${_v}_REL}")
  endif()
endforeach()
file(MAKE_DIRECTORY "${TICKHOST_UNIT_STAGE}")
foreach(_unit tickhost.service tickhost@.service)
  configure_file("${TICKHOST_UNIT_SOURCES}/${_unit}.in" "${TICKHOST_UNIT_STAGE}/${_unit}" @ONLY)
endforeach()
file(INSTALL "${TICKHOST_UNIT_STAGE}/tickhost.service" "${TICKHOST_UNIT_STAGE}/tickhost@.service"
     DESTINATION "${TICKHOST_UNIT_DIR}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
file(INSTALL "${TICKHOST_SERVICE_TOML}" DESTINATION "${TICKHOST_UNIT_SYSCONFDIR}/tickhost"
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
# plugins.d: empty, root-owned when installed as root (as in the package), 0755: the service's user may read it,
# not write it.
file(MAKE_DIRECTORY "${TICKHOST_UNIT_STAGE}/plugins.d")
file(INSTALL "${TICKHOST_UNIT_STAGE}/plugins.d" DESTINATION "${TICKHOST_UNIT_SYSCONFDIR}/tickhost"
     DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
