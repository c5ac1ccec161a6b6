# Install rules and the CMake / pkg-config packages, so that an out-of-tree project does
#   find_package(tickhost 1.0 CONFIG REQUIRED)
# and gets tickhost::sdk, tickhost::host and tickhost_add_plugin(), and a plain-Makefile C author does
#   cc $(pkg-config --cflags tickhost-sdk) -shared -fPIC -o x.so x.c
# Included once from the top CMakeLists.txt, after sdk/ and host/.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TICKHOST_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tickhost)
# The ABI version is defined once, in plugin.h.
file(STRINGS ${PROJECT_SOURCE_DIR}/sdk/include/tickhost/plugin.h abi_lines REGEX "^#define TH_ABI_(MAJOR|MINOR) ")
string(REGEX REPLACE ".*TH_ABI_MAJOR ([0-9]+).*" "\\1" TICKHOST_ABI_MAJOR "${abi_lines}")
string(REGEX REPLACE ".*TH_ABI_MINOR ([0-9]+).*" "\\1" TICKHOST_ABI_MINOR "${abi_lines}")

# SDK: header-only (the C ABI header, the C++ layer, the generated version header).
install(TARGETS tickhost_sdk EXPORT tickhostSdkTargets)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/sdk/include/tickhost ${TICKHOST_GENERATED_INCLUDE_DIR}/tickhost
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp")

# Host library: static on purpose. Its C++ API (std::function, std::string, spdlog types) is source-stable
# within 1.x but makes no binary promise, so a shared libtickhost.so.1 would promise what we cannot keep;
# the only binary-stable interface is the plugin C ABI. Embedding applications link it into themselves.
install(TARGETS tickhost_host EXPORT tickhostHostTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/host/include/tickhost DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")

install(TARGETS tickhost RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS tickhost-worker RUNTIME DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/tickhost)

# Two export sets, so that find_package(tickhost COMPONENTS sdk) needs none of the host's dependencies.
install(EXPORT tickhostSdkTargets NAMESPACE tickhost:: DESTINATION ${TICKHOST_CMAKE_DIR} FILE tickhostSdkTargets.cmake)
install(EXPORT tickhostHostTargets NAMESPACE tickhost:: DESTINATION ${TICKHOST_CMAKE_DIR} FILE tickhostHostTargets.cmake)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/tickhostConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/package/tickhostConfig.cmake
                              INSTALL_DESTINATION ${TICKHOST_CMAKE_DIR})
# 1.x hosts load every 1.x plugin whose minor is not newer: the same rule for the CMake package.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/package/tickhostConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/package/tickhostConfig.cmake
              ${PROJECT_BINARY_DIR}/package/tickhostConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/sdk/cmake/TickhostPlugin.cmake
        DESTINATION ${TICKHOST_CMAKE_DIR})

# pkg-config for plain-Makefile C authors: the SDK is header-only, so Cflags is all there is. The
# plugin_cflags / plugin_ldflags variables carry what tickhost_add_plugin() sets, for Makefiles that want it.
# Relocatable: the prefix is found from the .pc file's own place, so `cmake --install --prefix P` works.
file(RELATIVE_PATH TICKHOST_PC_TO_PREFIX /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REGEX REPLACE "/$" "" TICKHOST_PC_TO_PREFIX "${TICKHOST_PC_TO_PREFIX}")
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(TICKHOST_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(TICKHOST_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/tickhost-sdk.pc.in ${PROJECT_BINARY_DIR}/package/tickhost-sdk.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/package/tickhost-sdk.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/writing-plugins.md
              ${PROJECT_SOURCE_DIR}/docs/embedding.md ${PROJECT_SOURCE_DIR}/docs/security.md
              ${PROJECT_SOURCE_DIR}/docs/operating.md
              ${PROJECT_SOURCE_DIR}/CHANGELOG.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
# Every key with its default (its plugin_dir points at the source tree's example build: adapt it).
install(FILES ${PROJECT_SOURCE_DIR}/host.toml DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
