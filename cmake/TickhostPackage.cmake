# The Debian 12 packages, made by CPack from the two install components (cmake/TickhostInstall.cmake):
#   tickhost_<version>-1_amd64.deb      the host, tickhost-worker, the systemd units, /etc/tickhost/host.toml
#                                       (a conffile), /etc/tickhost/plugins.d, /var/lib/tickhost, the man page,
#                                       the docs; postinst makes the system user `tickhost` (useradd)
#   tickhost-dev_<version>-1_amd64.deb  the SDK and host headers, libtickhost.a, the CMake and pkg-config packages
# Configure with -DTICKHOST_DEB=ON -DCMAKE_INSTALL_PREFIX=/usr, build, then `cpack -G DEB` in the build tree.
# scripts/deb-test.sh does all of it with Debian's hardening flags, runs lintian on both packages and installs
# them into a bare Debian 12. Included from the top CMakeLists.txt when TICKHOST_INSTALL is on.
if(TICKHOST_DEB AND NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "TICKHOST_DEB needs -DCMAKE_INSTALL_PREFIX=/usr (it is ${CMAKE_INSTALL_PREFIX})")
endif()
set(TICKHOST_DEB_MAINTAINER "tickhost maintainers <dev@tickhost.invalid>" CACHE STRING
    "The Maintainer of the Debian packages")
set(TICKHOST_DEB_RELEASE 1 CACHE STRING "The Debian revision of the packages (tickhost_<version>-<revision>)")
set(TICKHOST_DEB_VERSION "${PROJECT_VERSION}-${TICKHOST_DEB_RELEASE}")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tickhost)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${TICKHOST_DEB_MAINTAINER}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Install with DESTDIR: CMAKE_INSTALL_PREFIX stays /usr while the units are written (their absolute paths), and
# /etc and /lib/systemd/system land in the package, not on the machine.
set(CPACK_SET_DESTDIR ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${TICKHOST_DEB_RELEASE})
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME tickhost)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
# useradd (passwd) in postinst; deb-systemd-helper and deb-systemd-invoke (init-system-helpers) for the units.
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "passwd, init-system-helpers (>= 1.54~)")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst ${PROJECT_SOURCE_DIR}/packaging/debian/prerm
    ${PROJECT_SOURCE_DIR}/packaging/debian/postrm ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles)
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "host for periodic task plugins
tickhost runs task plugins: shared libraries built against its small, stable
C ABI, each declaring tasks that the host runs periodically on one timer
thread and a bounded worker pool, with a timeout and a cancellation flag per
run and one stop call per task when it stops. Plugins dropped into
/etc/tickhost/plugins.d are checked, loaded and scheduled; replaced ones are
upgraded without a restart (a broken new version leaves the old one running);
a plugin may run in a process of its own, where a crash or a hang costs that
plugin only.

This package has the tickhost program with its tools (check, run-once,
new-plugin), the hardened systemd units tickhost.service and tickhost@.service
(Type=notify, with a watchdog), the configuration /etc/tickhost/host.toml and
the tickhost system user.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME tickhost-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# find_package(tickhost) without COMPONENTS brings tickhost::host, whose static library needs these.
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libspdlog-dev, libtomlplusplus-dev, libssl-dev")
set(CPACK_DEBIAN_DEV_PACKAGE_RECOMMENDS "tickhost (= ${TICKHOST_DEB_VERSION}), cmake | pkg-config")
set(CPACK_COMPONENT_DEV_DESCRIPTION "host for periodic task plugins - development files
tickhost runs task plugins: shared libraries built against its small, stable
C ABI, each declaring tasks that the host runs periodically with a timeout,
a cancellation flag and a stop call.

This package has what plugin authors and applications embedding the runtime
build with: the plugin SDK (the C ABI header <tickhost/plugin.h> and its
header-only C++ layer), the runtime as a static library with its headers,
the CMake package (find_package(tickhost), tickhost_add_plugin()) and the
pkg-config file tickhost-sdk.pc.")

# What Debian wants in every package's /usr/share/doc/<package>: copyright, changelog.Debian.gz; the
# upstream changelog as changelog.gz. Compressed reproducibly (gzip -n).
if(TICKHOST_DEB)
  string(TIMESTAMP TICKHOST_DEB_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)  # $SOURCE_DATE_EPOCH if set
  set(_deb ${PROJECT_BINARY_DIR}/deb)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/debian/changelog.in ${_deb}/changelog.Debian @ONLY)
  add_custom_command(OUTPUT ${_deb}/changelog.Debian.gz ${_deb}/changelog.gz
                     COMMAND ${TICKHOST_GZIP} -9 -n -c ${_deb}/changelog.Debian > ${_deb}/changelog.Debian.gz
                     COMMAND ${TICKHOST_GZIP} -9 -n -c ${PROJECT_SOURCE_DIR}/CHANGELOG.md > ${_deb}/changelog.gz
                     DEPENDS ${_deb}/changelog.Debian ${PROJECT_SOURCE_DIR}/CHANGELOG.md VERBATIM)
  add_custom_target(tickhost_deb_docs ALL DEPENDS ${_deb}/changelog.Debian.gz ${_deb}/changelog.gz)
  foreach(_c runtime dev)
    set(_pkg tickhost)
    if(_c STREQUAL "dev")
      set(_pkg tickhost-dev)
    endif()
    install(FILES ${PROJECT_SOURCE_DIR}/packaging/debian/copyright ${_deb}/changelog.Debian.gz
            DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${_pkg} COMPONENT ${_c})
  endforeach()
  install(FILES ${_deb}/changelog.gz DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT runtime)
  # As dh_strip does: no .comment and .note sections in the binaries (CPACK_STRIP_FILES strips their symbols
  # first), no debug information in the static library, its members' dates and owners zeroed.
  find_program(TICKHOST_STRIP_PROGRAM NAMES strip REQUIRED)
  foreach(_c runtime dev)
    if(_c STREQUAL "runtime")
      set(_files "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/tickhost"
                 "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBEXECDIR}/tickhost/tickhost-worker")
      set(_args --remove-section=.comment --remove-section=.note)
    else()
      set(_files "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/libtickhost.a")
      set(_args --strip-debug --remove-section=.comment --remove-section=.note --enable-deterministic-archives)
    endif()
    install(CODE "
      foreach(_f ${_files})
        execute_process(COMMAND \"${TICKHOST_STRIP_PROGRAM}\" ${_args} \"\$ENV{DESTDIR}\${_f}\" RESULT_VARIABLE _rc)
        if(NOT _rc EQUAL 0)
          message(FATAL_ERROR \"strip failed on \$ENV{DESTDIR}\${_f}\")
        endif()
      endforeach()
    " COMPONENT ${_c})
  endforeach()
  # The state directory (the system user's home; systemd's StateDirectory=). postinst gives it to the user.
  install(DIRECTORY DESTINATION /var/lib/tickhost COMPONENT runtime)
endif()

include(CPack)
